-- What a browser desktop speaks ('vnc' or 'rdp'), written when it opens, so a
-- watcher gets the right viewer before the first chunk is stored. Rows from
-- before this column have '' and are told apart by their stored header.
ALTER TABLE desktop_recordings ADD COLUMN protocol TEXT NOT NULL DEFAULT '';
