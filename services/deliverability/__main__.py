"""``python -m services.deliverability [migrate]``"""

from services.deliverability.app import NAME, create_app
from services.deliverability.settings import DeliverabilitySettings
from services.deliverability.state import MIGRATIONS
from shared.runner import main

if __name__ == "__main__":
    main(name=NAME, settings_class=DeliverabilitySettings, create_app=create_app, migrations=MIGRATIONS)
