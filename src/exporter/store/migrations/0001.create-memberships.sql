-- Organizations and the memberships users hold in them.
-- Internal references use bigint identity keys; anything shown outside uses the uuid guid.

CREATE TABLE organizations (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    guid        uuid NOT NULL DEFAULT gen_random_uuid() UNIQUE,
    name        text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE memberships (
    id               bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    guid             uuid NOT NULL DEFAULT gen_random_uuid() UNIQUE,
    user_id          uuid NOT NULL,
    organization_id  bigint NOT NULL REFERENCES organizations (id),
    plan             text NOT NULL,
    status           text NOT NULL CHECK (status IN ('active', 'trialing', 'past_due', 'cancelled', 'expired')),
    role             text NOT NULL,
    started_on       date NOT NULL,
    ends_on          date,
    auto_renew       boolean NOT NULL DEFAULT false,
    price            numeric(12, 2) NOT NULL CHECK (price >= 0),
    currency         char(3) NOT NULL CHECK (currency ~ '^[A-Z]{3}$'),
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now(),
    CHECK (ends_on IS NULL OR ends_on >= started_on)
);

-- Serves "all memberships of user X in id order" (the export) as an index range scan.
CREATE INDEX memberships_user_id_id_idx ON memberships (user_id, id);
CREATE INDEX memberships_organization_id_idx ON memberships (organization_id);
