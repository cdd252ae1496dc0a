"""``python -m services.invitations [migrate]``"""

from shared.runner import main

from services.invitations.app import NAME, create_app
from services.invitations.settings import InvitationSettings
from services.invitations.state import MIGRATIONS

if __name__ == "__main__":
    main(name=NAME, settings_class=InvitationSettings, create_app=create_app, migrations=MIGRATIONS)
