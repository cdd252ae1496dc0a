"""``python -m services.permissions [migrate]``"""

from services.permissions.app import NAME, create_app
from services.permissions.settings import PermissionSettings
from services.permissions.state import MIGRATIONS
from shared.runner import main

if __name__ == "__main__":
    main(name=NAME, settings_class=PermissionSettings, create_app=create_app, migrations=MIGRATIONS)
