"""``python -m services.expiry [migrate]``"""

from services.expiry.app import NAME, create_app
from services.expiry.settings import ExpirySettings
from services.expiry.state import MIGRATIONS
from shared.runner import main

if __name__ == "__main__":
    main(name=NAME, settings_class=ExpirySettings, create_app=create_app, migrations=MIGRATIONS)
