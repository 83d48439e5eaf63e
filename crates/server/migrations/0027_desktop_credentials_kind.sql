-- What a stored desktop credential is for: 'vnc' (a VNC password, sealed as is)
-- or 'rdp' (a JSON object of domain, user name and password, sealed under the
-- context desktop_passwords:rdp:<device>:<target>), injected by the server.
ALTER TABLE desktop_passwords ADD COLUMN kind TEXT NOT NULL DEFAULT 'vnc';
