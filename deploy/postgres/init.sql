-- One database and one owner per service: neither service can read the other's data.
CREATE USER crm WITH PASSWORD 'crm-password-change-me';
CREATE DATABASE crm OWNER crm;
CREATE USER ecm WITH PASSWORD 'ecm-password-change-me';
CREATE DATABASE ecm OWNER ecm;
