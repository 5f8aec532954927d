-- A relay's HTTPS origin for browsers and the domain its web apps live under
-- (empty when it serves none).
ALTER TABLE relays ADD COLUMN https_url TEXT NOT NULL DEFAULT '';
ALTER TABLE relays ADD COLUMN apps_domain TEXT NOT NULL DEFAULT '';
