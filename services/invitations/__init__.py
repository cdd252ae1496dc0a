"""The invitations service. The portal imports :func:`verify_invitation` from here."""

from services.invitations.tokens import InvalidInvitation, InvitationClaims, verify_invitation

__all__ = ["InvalidInvitation", "InvitationClaims", "verify_invitation"]
