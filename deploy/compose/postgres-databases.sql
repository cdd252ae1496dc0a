-- One database per service (docker-compose.yml): each service's schema is its own, migrated by its
-- own `migrate` step. Run once, when the PostgreSQL volume is first initialised.
CREATE DATABASE invitations;
CREATE DATABASE expiry;
CREATE DATABASE permissions;
CREATE DATABASE support;
CREATE DATABASE deliverability;
