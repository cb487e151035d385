-- Token expiry (issue 16): Unix milliseconds; NULL never expires.
ALTER TABLE tokens ADD COLUMN expires_at BIGINT;
