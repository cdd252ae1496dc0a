"""The expiry service: service-plan reminders to the customer's contacts (90 days, 30 days, 2 weeks,
expired) and a daily digest per partner of its customers' plans that entered a bucket."""
