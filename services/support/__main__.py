"""``python -m services.support [migrate]``"""

from services.support.app import NAME, create_app
from services.support.settings import SupportSettings
from services.support.state import MIGRATIONS
from shared.runner import main

if __name__ == "__main__":
    main(name=NAME, settings_class=SupportSettings, create_app=create_app, migrations=MIGRATIONS)
