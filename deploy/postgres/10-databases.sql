-- Run once by the postgres image when its volume is new: one database per imaging source
-- (each tracks its own studies); registry and repositories share the database "xds".
CREATE DATABASE xds_hospital_a_imaging OWNER xds;
