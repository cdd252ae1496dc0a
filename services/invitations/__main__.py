"""``python -m services.invitations [migrate]``"""

from services.invitations.app import NAME, create_app
from services.invitations.settings import InvitationSettings
from services.invitations.state import MIGRATIONS
from shared.runner import main

if __name__ == "__main__":
    main(name=NAME, settings_class=InvitationSettings, create_app=create_app, migrations=MIGRATIONS)
