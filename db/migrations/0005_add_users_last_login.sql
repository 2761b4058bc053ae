-- Additive and nullable, so the running version keeps working during the rollout.
ALTER TABLE users ADD COLUMN last_login_at TIMESTAMP;
