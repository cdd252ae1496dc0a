"""The deliverability service: bounces and complaints sent back to the bounce address, read and matched with
the deliveries they are about (``notification.bounced``), and the suppressions they call for
(``suppression.added``)."""
