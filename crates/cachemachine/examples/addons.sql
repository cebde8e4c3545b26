-- The demo schema, after django-cache-machine's addons example: authors,
-- their add-ons and the add-ons' versions. REPLICA IDENTITY FULL keeps old
-- foreign-key values in the WAL, so moving an add-on to another author
-- invalidates both authors' lists precisely.
CREATE TABLE IF NOT EXISTS authors (id int PRIMARY KEY, name text NOT NULL);
CREATE TABLE IF NOT EXISTS addons (
    id int PRIMARY KEY,
    author_id int NOT NULL REFERENCES authors (id),
    name text NOT NULL,
    status text NOT NULL DEFAULT 'public'
);
CREATE TABLE IF NOT EXISTS versions (
    id int PRIMARY KEY,
    addon_id int NOT NULL REFERENCES addons (id),
    version text NOT NULL
);
ALTER TABLE addons REPLICA IDENTITY FULL;
ALTER TABLE versions REPLICA IDENTITY FULL;
INSERT INTO authors VALUES (1, 'Ada'), (2, 'Grace') ON CONFLICT DO NOTHING;
INSERT INTO addons VALUES
    (1, 1, 'Tab Grouper', 'public'),
    (2, 1, 'Dark Reader', 'public'),
    (3, 2, 'Cookie Jar', 'beta')
ON CONFLICT DO NOTHING;
INSERT INTO versions VALUES (1, 1, '1.0'), (2, 1, '1.1'), (3, 2, '0.9') ON CONFLICT DO NOTHING;
