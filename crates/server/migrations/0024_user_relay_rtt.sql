-- Round-trip times a user's client last measured to the relays (JSON object
-- relay name -> ms), reported on its session channel: new sessions of the user
-- go to the relay nearest their edges and their clients.
ALTER TABLE users ADD COLUMN relay_rtt TEXT;
