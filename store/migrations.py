"""Versioned schema migrations, applied in order; never edit a released one, append a new one.

The scripts are written for SQLite; `statements(script, dialect)` renders them for PostgreSQL with the
few rules below (`to_postgresql`), so both back ends get their schema from this one list. Write new ones in
the subset those rules cover (tests/test_store_backends.py compares the two schemas).
"""

from __future__ import annotations

import re

MIGRATIONS: list[str] = [
    # 1: initial schema
    """
    CREATE TABLE meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);
    INSERT INTO meta (name, value) VALUES ('created', strftime('%s','now'));
    CREATE TABLE secrets (
        name TEXT PRIMARY KEY,
        token BLOB NOT NULL,              -- Fernet token; plaintext never stored
        updated_at REAL NOT NULL
    );
    CREATE TABLE channels (
        channel_id TEXT PRIMARY KEY,      -- bare Teams channel / conversation id
        tenant_id TEXT,
        team_id TEXT,
        service_url TEXT NOT NULL,
        reference TEXT NOT NULL,          -- serialized conversation reference (JSON)
        name TEXT,
        active INTEGER NOT NULL DEFAULT 1,
        inactive_reason TEXT,
        paused INTEGER NOT NULL DEFAULT 0,
        updated_at REAL NOT NULL
    );
    CREATE TABLE bindings (
        id INTEGER PRIMARY KEY,
        channel_id TEXT NOT NULL REFERENCES channels(channel_id),
        company TEXT NOT NULL,
        kinds TEXT NOT NULL,              -- comma list of record kinds
        cost_centers TEXT NOT NULL DEFAULT '',
        min_amount TEXT,
        created_by TEXT,
        created_at REAL NOT NULL,
        UNIQUE (channel_id, company)
    );
    CREATE INDEX bindings_company ON bindings (company);
    CREATE TABLE events (
        id INTEGER PRIMARY KEY,
        record_id TEXT NOT NULL,
        type TEXT NOT NULL,               -- new / changed / resolved
        record TEXT NOT NULL,             -- FinanceRecord JSON as of this event
        previous_state TEXT,
        created_at REAL NOT NULL
    );
    CREATE TABLE seen (
        kind TEXT NOT NULL,
        company TEXT NOT NULL,
        key TEXT NOT NULL,
        etag TEXT NOT NULL,
        state TEXT NOT NULL,
        step TEXT NOT NULL DEFAULT '',
        event_id INTEGER NOT NULL REFERENCES events(id),  -- latest event: carries the record as last seen
        first_seen REAL NOT NULL,
        PRIMARY KEY (kind, company, key)
    ) WITHOUT ROWID;
    CREATE TABLE deliveries (
        id INTEGER PRIMARY KEY,
        event_id INTEGER NOT NULL REFERENCES events(id),
        channel_id TEXT NOT NULL,
        record_id TEXT NOT NULL,
        event_type TEXT NOT NULL,
        status TEXT NOT NULL DEFAULT 'pending',  -- pending sending sent failed dead digested superseded skipped
        attempts INTEGER NOT NULL DEFAULT 0,
        next_at REAL NOT NULL,
        lease_until REAL,
        created_at REAL NOT NULL,
        sent_at REAL,
        last_status INTEGER,
        last_code TEXT,
        last_error TEXT,
        digest_id INTEGER,
        UNIQUE (event_id, channel_id)     -- idempotency: one delivery per event and channel
    );
    CREATE INDEX deliveries_due ON deliveries (status, next_at);
    CREATE INDEX deliveries_channel ON deliveries (channel_id, status);
    CREATE TABLE cards (
        record_id TEXT NOT NULL,
        channel_id TEXT NOT NULL,
        conversation_id TEXT NOT NULL,    -- '<channel>;messageid=<root>'
        activity_id TEXT NOT NULL,
        updated_at REAL NOT NULL,
        PRIMARY KEY (record_id, channel_id)
    ) WITHOUT ROWID;
    CREATE TABLE sources (
        kind TEXT NOT NULL,
        company TEXT NOT NULL,
        last_run REAL,
        last_ok REAL,
        last_error TEXT,
        available INTEGER NOT NULL DEFAULT 1,
        pending INTEGER NOT NULL DEFAULT 0,
        cursor TEXT,
        PRIMARY KEY (kind, company)
    );
    CREATE TABLE quarantine (
        kind TEXT NOT NULL,
        company TEXT NOT NULL,
        key TEXT NOT NULL,
        field TEXT NOT NULL,
        problem TEXT NOT NULL,
        first_at REAL NOT NULL,
        last_at REAL NOT NULL,
        count INTEGER NOT NULL DEFAULT 1,
        PRIMARY KEY (kind, company, key)
    );
    CREATE TABLE audit (
        id INTEGER PRIMARY KEY,
        at REAL NOT NULL,
        category TEXT NOT NULL,           -- poll delivery command lifecycle record security system
        action TEXT NOT NULL,
        outcome TEXT NOT NULL,            -- ok failed denied error skipped retry dead
        channel_id TEXT,
        company TEXT,
        record_id TEXT,
        delivery_id INTEGER,
        actor TEXT,
        detail TEXT                       -- JSON object; never secrets, bodies or tokens
    );
    CREATE INDEX audit_channel ON audit (channel_id, id);
    CREATE INDEX audit_outcome ON audit (outcome, id)
    """,
    # 2: approval chains read per record, so progress on the approval lines (which IFS may record without
    # touching the document row) can be noticed for documents whose card is in a channel
    """
    ALTER TABLE seen ADD COLUMN chain TEXT NOT NULL DEFAULT '';
    ALTER TABLE seen ADD COLUMN chain_checked REAL NOT NULL DEFAULT 0
    """,
    # 3: quiet hours per channel
    """
    ALTER TABLE channels ADD COLUMN quiet_hours TEXT
    """,
    # 4: people: IFS users mapped to Teams users (mentions on cards, personal notifications)
    """
    CREATE TABLE people (
        ifs_user TEXT PRIMARY KEY,        -- IFS user id, upper case as IFS keeps identities
        name TEXT NOT NULL,               -- display name in Teams
        aad_object_id TEXT,               -- Entra object id, lower case
        upn TEXT,
        teams_id TEXT,                    -- Bot Framework user id (29:...) when the user wrote to the bot
        status TEXT NOT NULL DEFAULT 'active',  -- active / pending (waiting for an admin to confirm)
        conversation_id TEXT,             -- the user's personal chat with the bot (a channels row)
        personal INTEGER NOT NULL DEFAULT 1,    -- personal notifications wanted
        created_by TEXT,
        updated_at REAL NOT NULL
    );
    CREATE INDEX people_aad ON people (aad_object_id)
    """,
    # 5: who took a document ("I'm on it" on its card); one holder per document, in every channel
    """
    CREATE TABLE claims (
        record_id TEXT PRIMARY KEY,
        user_id TEXT NOT NULL,            -- Entra object id (or 29: id) of the holder
        name TEXT NOT NULL,               -- display name in Teams
        at REAL NOT NULL
    )
    """,
    # 6: "remind me tomorrow": a document left out of one person's reminders until a time
    """
    CREATE TABLE snoozes (
        user_id TEXT NOT NULL,            -- Entra object id (or 29: id)
        record_id TEXT NOT NULL,
        until REAL NOT NULL,              -- unix time; reminders before it leave the document out
        PRIMARY KEY (user_id, record_id)
    ) WITHOUT ROWID
    """,
    # 7: more than one replica on one database: which replica runs the scheduler (an epoch per takeover),
    # which replicas are alive (the app-wide Teams limit is shared among them), which replica delivers to
    # which channel (so a channel's Teams limits are kept by one limiter at a time)
    """
    CREATE TABLE leadership (
        name TEXT PRIMARY KEY,            -- 'scheduler' (the lead); 'poll soon' (its epoch: polls asked for)
        epoch INTEGER NOT NULL,           -- incremented each time a replica becomes the leader
        holder TEXT NOT NULL,             -- replica id (service.replica_name, or host:pid)
        since REAL NOT NULL               -- unix time the holder took over
    );
    CREATE TABLE replicas (
        replica TEXT PRIMARY KEY,         -- replica id
        started_at REAL NOT NULL,
        seen_at REAL NOT NULL             -- heartbeat, unix time
    );
    CREATE TABLE channel_leases (
        channel_id TEXT PRIMARY KEY,      -- delivered by this owner only, until the lease ends
        owner TEXT NOT NULL,              -- replica id
        until REAL NOT NULL               -- unix time
    )
    """,
    # 8: a channel Teams asked to wait long (429 with a long Retry-After): no replica sends there before
    # held_until (unix time; NULL: not held). (No comment inside: SQLite splices the column's text into the
    # table's CREATE statement, where a trailing comment would swallow the closing parenthesis.)
    """
    ALTER TABLE channels ADD COLUMN held_until REAL
    """,
]


# SQLite text -> PostgreSQL text, applied in order to each statement. Types keep their SQLite meaning:
# INTEGER is 64-bit there (BIGINT), REAL a double (PostgreSQL's REAL is 4 bytes: a unix time would lose its
# seconds), TEXT compares byte-wise (COLLATE "C", as SQLite's BINARY: the same ORDER BY and ranges).
_PG_RULES: list[tuple[re.Pattern[str], str]] = [(re.compile(p, re.IGNORECASE), r) for p, r in [
    (r"\bINTEGER PRIMARY KEY\b", "BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY"),
    (r"\bINTEGER\b", "BIGINT"),
    (r"\bREAL\b", "DOUBLE PRECISION"),
    (r"\bBLOB\b", "BYTEA"),
    (r"\bTEXT\b", 'TEXT COLLATE "C"'),
    (r"\)\s*WITHOUT ROWID\s*$", ")"),
    (r"strftime\('%s',\s*'now'\)", "floor(extract(epoch FROM now()))::bigint::text"),
]]


def to_postgresql(statement: str) -> str:
    """One SQLite DDL statement (or INSERT) of the migrations, as PostgreSQL writes it."""
    # comments go first (they may say anything); so a migration never writes "--" inside a string literal
    out = "\n".join(line.split("--", 1)[0].rstrip() for line in statement.splitlines())
    for pattern, replacement in _PG_RULES:
        out = pattern.sub(replacement, out)
    return out.strip()


def split_script(script: str) -> list[str]:
    return [s.strip() for s in script.split(";\n") if s.strip()]


def statements(script: str, dialect: str) -> list[str]:
    """A migration script as the statements to run on `dialect` ("sqlite" or "postgresql")."""
    parts = split_script(script)
    return parts if dialect == "sqlite" else [to_postgresql(p) for p in parts]


# pg_advisory_xact_lock key held while migrating on PostgreSQL (other advisory locks of ours use other keys)
MIGRATION_LOCK = 0x6E6F_7469_6669_0001
SCHEMA_VERSION_TABLE = "CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)"
