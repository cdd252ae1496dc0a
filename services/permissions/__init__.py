"""The permissions service: partner requests to manage a customer's Software Assurance benefits, and
every decision on them (approved, denied, removed), by e-mail to administrators and partners."""
