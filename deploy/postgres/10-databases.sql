-- Run once by the postgres image when its volume is new: one database per imaging source
-- (each tracks its own studies); registry and repositories share the database "xds"; the portal, the
-- audit record repository and the OpenID Connect provider (Keycloak) have their own.
CREATE DATABASE xds_hospital_a_imaging OWNER xds;
CREATE DATABASE xds_portal OWNER xds;
CREATE DATABASE xds_audit OWNER xds;
CREATE DATABASE keycloak OWNER xds;
