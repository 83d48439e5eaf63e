-- How a recording's chunks are stored: 'raw' (the framed stream, sealed) or
-- 'lz4' (compressed with LZ4, its size prepended, then sealed).
ALTER TABLE desktop_recordings ADD COLUMN chunk_format TEXT NOT NULL DEFAULT 'raw';
