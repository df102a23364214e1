//! The schema: migrations applied in order at open, one transaction each.
//! SQLite's have grown one by one since the first release; PostgreSQL's
//! start from what SQLite's reached, in PostgreSQL's types, and grow in
//! step from there.

use rusqlite::Connection;

/// Schema migrations, applied in order; `user_version` counts those applied.
pub(super) const MIGRATIONS: &[&str] = &["
    CREATE TABLE requests (
        id           TEXT PRIMARY KEY,
        pipeline     TEXT NOT NULL,
        generation   INTEGER NOT NULL,
        status       TEXT NOT NULL CHECK (status IN ('answered', 'escalated', 'rejected', 'failed')),
        input        TEXT NOT NULL,
        attributes   TEXT NOT NULL,
        output       TEXT,
        confidence   REAL,
        stage        TEXT,
        layer        TEXT,
        code         TEXT,
        message      TEXT,
        trace        TEXT NOT NULL,
        created_at   INTEGER NOT NULL,
        completed_at INTEGER
    );
    CREATE TABLE tickets (
        id          INTEGER PRIMARY KEY AUTOINCREMENT,
        request_id  TEXT NOT NULL UNIQUE REFERENCES requests (id),
        pipeline    TEXT NOT NULL,
        stage       TEXT,
        reason      TEXT NOT NULL,
        draft       TEXT,
        state       TEXT NOT NULL CHECK (state IN ('open', 'claimed', 'resolved')),
        claimed_by  TEXT,
        claimed_at  INTEGER,
        resolution  TEXT,
        resolved_by TEXT,
        resolved_at INTEGER,
        created_at  INTEGER NOT NULL
    );
    CREATE INDEX tickets_by_state ON tickets (state, id);
", "
    CREATE TABLE audit (
        id              INTEGER PRIMARY KEY AUTOINCREMENT,
        at              INTEGER NOT NULL,
        action          TEXT NOT NULL,
        trigger         TEXT NOT NULL,
        actor           TEXT NOT NULL,
        result          TEXT NOT NULL CHECK (result IN ('applied', 'unchanged', 'failed')),
        from_generation INTEGER,
        to_generation   INTEGER,
        manifest_sha256 TEXT,
        changes         TEXT NOT NULL,
        note            TEXT
    );
    CREATE TABLE shadow_runs (
        id               INTEGER PRIMARY KEY AUTOINCREMENT,
        at               INTEGER NOT NULL,
        request_id       TEXT NOT NULL,
        pipeline         TEXT NOT NULL,
        stage            TEXT NOT NULL,
        live_digest      TEXT NOT NULL,
        candidate_digest TEXT NOT NULL,
        same             INTEGER NOT NULL,
        live             TEXT NOT NULL,
        candidate        TEXT NOT NULL
    );
    CREATE INDEX shadow_runs_by_stage ON shadow_runs (pipeline, stage, candidate_digest, id);
", "
    ALTER TABLE requests ADD COLUMN remember_key TEXT;
    ALTER TABLE requests ADD COLUMN cost_usd REAL NOT NULL DEFAULT 0;
    CREATE TABLE answer_bank (
        pipeline    TEXT NOT NULL,
        key         TEXT NOT NULL,
        answer      TEXT NOT NULL,
        source      TEXT NOT NULL,
        approved_by TEXT NOT NULL,
        request_id  TEXT,
        updated_at  INTEGER NOT NULL,
        PRIMARY KEY (pipeline, key)
    );
    CREATE TABLE feedback (
        id         INTEGER PRIMARY KEY AUTOINCREMENT,
        at         INTEGER NOT NULL,
        kind       TEXT NOT NULL CHECK (kind IN ('rating', 'correction', 'resolution')),
        request_id TEXT NOT NULL,
        pipeline   TEXT NOT NULL,
        key        TEXT,
        input      TEXT NOT NULL,
        answer     TEXT,
        rating     TEXT CHECK (rating IN ('good', 'bad')),
        correction TEXT,
        actor      TEXT NOT NULL
    );
", "
    CREATE TABLE jobs (
        id         TEXT PRIMARY KEY,
        pipeline   TEXT NOT NULL,
        input      TEXT NOT NULL,
        attributes TEXT NOT NULL,
        callback   TEXT,
        state      TEXT NOT NULL CHECK (state IN ('queued', 'running', 'done')),
        runs       INTEGER NOT NULL DEFAULT 0,
        created_at INTEGER NOT NULL,
        done_at    INTEGER
    );
    CREATE INDEX jobs_by_state ON jobs (state, created_at);
    CREATE TABLE callbacks (
        request_id TEXT PRIMARY KEY,
        url        TEXT NOT NULL,
        state      TEXT NOT NULL CHECK (state IN ('waiting', 'pending', 'delivered', 'failed')),
        attempts   INTEGER NOT NULL DEFAULT 0,
        next_at    INTEGER,
        created_at INTEGER NOT NULL
    );
    CREATE INDEX callbacks_due ON callbacks (state, next_at);
    CREATE TABLE deliveries (
        id         INTEGER PRIMARY KEY AUTOINCREMENT,
        request_id TEXT NOT NULL,
        attempt    INTEGER NOT NULL,
        at         INTEGER NOT NULL,
        status     INTEGER,
        error      TEXT,
        ok         INTEGER NOT NULL
    );
    CREATE INDEX deliveries_by_request ON deliveries (request_id, id);
", "
    -- Tickets of a second kind: a client's proposed correction of an answer,
    -- waiting for a reviewer to accept or reject it. A request has at most
    -- one escalation ticket and any number of correction tickets.
    CREATE TABLE tickets_v5 (
        id          INTEGER PRIMARY KEY AUTOINCREMENT,
        request_id  TEXT NOT NULL REFERENCES requests (id),
        kind        TEXT NOT NULL DEFAULT 'escalation'
                    CHECK (kind IN ('escalation', 'correction')),
        pipeline    TEXT NOT NULL,
        stage       TEXT,
        reason      TEXT NOT NULL,
        draft       TEXT,
        state       TEXT NOT NULL CHECK (state IN ('open', 'claimed', 'resolved', 'rejected')),
        claimed_by  TEXT,
        claimed_at  INTEGER,
        resolution  TEXT,
        resolved_by TEXT,
        resolved_at INTEGER,
        created_at  INTEGER NOT NULL,
        proposed_by TEXT
    );
    INSERT INTO tickets_v5 (id, request_id, pipeline, stage, reason, draft, state, claimed_by,
                            claimed_at, resolution, resolved_by, resolved_at, created_at)
        SELECT id, request_id, pipeline, stage, reason, draft, state, claimed_by, claimed_at,
               resolution, resolved_by, resolved_at, created_at FROM tickets;
    DROP TABLE tickets;
    ALTER TABLE tickets_v5 RENAME TO tickets;
    CREATE UNIQUE INDEX tickets_escalation ON tickets (request_id) WHERE kind = 'escalation';
    CREATE INDEX tickets_by_state ON tickets (state, id);
    CREATE INDEX tickets_by_request ON tickets (request_id);
    CREATE TABLE feedback_v5 (
        id         INTEGER PRIMARY KEY AUTOINCREMENT,
        at         INTEGER NOT NULL,
        kind       TEXT NOT NULL
                   CHECK (kind IN ('rating', 'correction', 'resolution', 'proposal')),
        request_id TEXT NOT NULL,
        pipeline   TEXT NOT NULL,
        key        TEXT,
        input      TEXT NOT NULL,
        answer     TEXT,
        rating     TEXT CHECK (rating IN ('good', 'bad')),
        correction TEXT,
        actor      TEXT NOT NULL
    );
    INSERT INTO feedback_v5 SELECT * FROM feedback;
    DROP TABLE feedback;
    ALTER TABLE feedback_v5 RENAME TO feedback;
    -- A job that ran too often without completing is dead: kept, with why,
    -- and never run again.
    CREATE TABLE jobs_v5 (
        id         TEXT PRIMARY KEY,
        pipeline   TEXT NOT NULL,
        input      TEXT NOT NULL,
        attributes TEXT NOT NULL,
        callback   TEXT,
        state      TEXT NOT NULL CHECK (state IN ('queued', 'running', 'done', 'dead')),
        runs       INTEGER NOT NULL DEFAULT 0,
        created_at INTEGER NOT NULL,
        done_at    INTEGER,
        reason     TEXT
    );
    INSERT INTO jobs_v5 (id, pipeline, input, attributes, callback, state, runs, created_at,
                         done_at)
        SELECT id, pipeline, input, attributes, callback, state, runs, created_at, done_at
        FROM jobs;
    DROP TABLE jobs;
    ALTER TABLE jobs_v5 RENAME TO jobs;
    CREATE INDEX jobs_by_state ON jobs (state, created_at);
    CREATE INDEX requests_by_completion ON requests (completed_at);
    CREATE INDEX audit_by_time ON audit (at);
    CREATE INDEX shadow_runs_by_time ON shadow_runs (at);
    CREATE INDEX deliveries_by_time ON deliveries (at);
", "
    -- The learned answer bank: approved answers with the example questions
    -- they answer. A label (intent) names at most one pattern per pipeline.
    CREATE TABLE patterns (
        id         INTEGER PRIMARY KEY AUTOINCREMENT,
        pipeline   TEXT NOT NULL,
        answer     TEXT NOT NULL,
        label      TEXT,
        source     TEXT NOT NULL,
        strictness REAL NOT NULL DEFAULT 0,
        created_at INTEGER NOT NULL,
        updated_at INTEGER NOT NULL
    );
    CREATE UNIQUE INDEX patterns_by_label ON patterns (pipeline, label) WHERE label IS NOT NULL;
    CREATE INDEX patterns_by_answer ON patterns (pipeline, answer);
    CREATE TABLE examples (
        id         INTEGER PRIMARY KEY AUTOINCREMENT,
        pattern    INTEGER NOT NULL REFERENCES patterns (id) ON DELETE CASCADE,
        question   TEXT NOT NULL,
        source     TEXT NOT NULL,
        created_at INTEGER NOT NULL,
        UNIQUE (pattern, question)
    );
    -- The pattern whose answer a request got from the bank, so a rating of
    -- the answer counts against the pattern.
    ALTER TABLE requests ADD COLUMN pattern INTEGER;
", "
    -- Embeddings of example questions, per embeddings model (the provider's
    -- model name), so a restart embeds only what is new and another model
    -- embeds everything again. Little-endian f32s.
    CREATE TABLE example_vectors (
        example INTEGER NOT NULL REFERENCES examples (id) ON DELETE CASCADE,
        model   TEXT NOT NULL,
        vector  BLOB NOT NULL,
        PRIMARY KEY (example, model)
    ) WITHOUT ROWID;
", "
    -- The team whose token made a request (`[teams.NAME]`), for spend
    -- against its budgets; carried by an asynchronous request's job.
    ALTER TABLE requests ADD COLUMN team TEXT;
    CREATE INDEX requests_by_team ON requests (team, created_at) WHERE team IS NOT NULL;
    ALTER TABLE jobs ADD COLUMN team TEXT;
", "
    -- The host running a job and until when its claim holds: hosts sharing
    -- a store take a job whose lease ended (its host died).
    ALTER TABLE jobs ADD COLUMN owner TEXT;
    ALTER TABLE jobs ADD COLUMN lease_until INTEGER;
", "
    -- Every request's record is checked against `status IN (four values)`,
    -- which SQLite evaluates by building a temporary table on each insert;
    -- the same check written as comparisons builds nothing. The same goes
    -- for the states of tickets, jobs and callbacks, written with every
    -- escalation, asynchronous request and callback. Only the constraints'
    -- text changes and every stored row meets both forms, so the tables'
    -- definitions are edited in place, as SQLite documents for changing a
    -- CHECK constraint ('Making Other Kinds Of Table Schema Changes' in
    -- lang_altertable.html). `RESET` has this connection read the edited
    -- definitions; `migrate` moves the schema version on so that every
    -- other connection does too.
    PRAGMA writable_schema = ON;
    UPDATE sqlite_schema
       SET sql = replace(replace(replace(replace(sql,
           'CHECK (status IN (''answered'', ''escalated'', ''rejected'', ''failed''))',
           'CHECK (status = ''answered'' OR status = ''escalated'' OR status = ''rejected''
                   OR status = ''failed'')'),
           'CHECK (state IN (''open'', ''claimed'', ''resolved'', ''rejected''))',
           'CHECK (state = ''open'' OR state = ''claimed'' OR state = ''resolved''
                   OR state = ''rejected'')'),
           'CHECK (state IN (''queued'', ''running'', ''done'', ''dead''))',
           'CHECK (state = ''queued'' OR state = ''running'' OR state = ''done''
                   OR state = ''dead'')'),
           'CHECK (state IN (''waiting'', ''pending'', ''delivered'', ''failed''))',
           'CHECK (state = ''waiting'' OR state = ''pending'' OR state = ''delivered''
                   OR state = ''failed'')')
     WHERE type = 'table' AND name IN ('requests', 'tickets', 'jobs', 'callbacks');
    PRAGMA writable_schema = RESET;
"];

pub(super) fn migrate(conn: &mut Connection) -> anyhow::Result<()> {
    let applied: usize = conn.query_row("PRAGMA user_version", [], |row| row.get(0))?;
    if applied > MIGRATIONS.len() {
        anyhow::bail!(
            "the database is at schema version {applied}, newer than this build knows ({}); \
             use a newer strata",
            MIGRATIONS.len()
        );
    }
    for (index, sql) in MIGRATIONS.iter().enumerate().skip(applied) {
        let tx = conn.transaction()?;
        tx.execute_batch(sql)?;
        // A definition edited in `sqlite_schema` directly is noticed only
        // when the schema version moves.
        if sql.contains("writable_schema") {
            let version: i64 = tx.query_row("PRAGMA schema_version", [], |row| row.get(0))?;
            tx.pragma_update(None, "schema_version", version + 1)?;
            // The edited definition is read back now: if it did not parse,
            // the migration fails and rolls back rather than leaving a
            // database nothing can open.
            tx.prepare("SELECT * FROM requests LIMIT 0")?;
        }
        tx.pragma_update(None, "user_version", index + 1)?;
        tx.commit()?;
    }
    Ok(())
}

/// PostgreSQL's migrations, applied in order; `strata_schema` counts those
/// applied. Integers are `BIGINT` (Unix milliseconds, counts), reals
/// `DOUBLE PRECISION`, so each column holds what SQLite's does.
pub(super) const POSTGRES_MIGRATIONS: &[&str] = &["
    CREATE TABLE requests (
        id           TEXT PRIMARY KEY,
        pipeline     TEXT NOT NULL,
        generation   BIGINT NOT NULL,
        status       TEXT NOT NULL CHECK (status IN ('answered', 'escalated', 'rejected', 'failed')),
        input        TEXT NOT NULL,
        attributes   TEXT NOT NULL,
        output       TEXT,
        confidence   DOUBLE PRECISION,
        stage        TEXT,
        layer        TEXT,
        code         TEXT,
        message      TEXT,
        trace        TEXT NOT NULL,
        created_at   BIGINT NOT NULL,
        completed_at BIGINT,
        remember_key TEXT,
        cost_usd     DOUBLE PRECISION NOT NULL DEFAULT 0,
        pattern      BIGINT,
        team         TEXT
    );
    CREATE INDEX requests_by_completion ON requests (completed_at);
    CREATE INDEX requests_by_team ON requests (team, created_at) WHERE team IS NOT NULL;
    CREATE TABLE tickets (
        id          BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
        request_id  TEXT NOT NULL REFERENCES requests (id),
        kind        TEXT NOT NULL DEFAULT 'escalation'
                    CHECK (kind IN ('escalation', 'correction')),
        pipeline    TEXT NOT NULL,
        stage       TEXT,
        reason      TEXT NOT NULL,
        draft       TEXT,
        state       TEXT NOT NULL CHECK (state IN ('open', 'claimed', 'resolved', 'rejected')),
        claimed_by  TEXT,
        claimed_at  BIGINT,
        resolution  TEXT,
        resolved_by TEXT,
        resolved_at BIGINT,
        created_at  BIGINT NOT NULL,
        proposed_by TEXT
    );
    CREATE UNIQUE INDEX tickets_escalation ON tickets (request_id) WHERE kind = 'escalation';
    CREATE INDEX tickets_by_state ON tickets (state, id);
    CREATE INDEX tickets_by_request ON tickets (request_id);
    CREATE TABLE audit (
        id              BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
        at              BIGINT NOT NULL,
        action          TEXT NOT NULL,
        trigger         TEXT NOT NULL,
        actor           TEXT NOT NULL,
        result          TEXT NOT NULL CHECK (result IN ('applied', 'unchanged', 'failed')),
        from_generation BIGINT,
        to_generation   BIGINT,
        manifest_sha256 TEXT,
        changes         TEXT NOT NULL,
        note            TEXT
    );
    CREATE INDEX audit_by_time ON audit (at);
    CREATE TABLE shadow_runs (
        id               BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
        at               BIGINT NOT NULL,
        request_id       TEXT NOT NULL,
        pipeline         TEXT NOT NULL,
        stage            TEXT NOT NULL,
        live_digest      TEXT NOT NULL,
        candidate_digest TEXT NOT NULL,
        same             BIGINT NOT NULL,
        live             TEXT NOT NULL,
        candidate        TEXT NOT NULL
    );
    CREATE INDEX shadow_runs_by_stage ON shadow_runs (pipeline, stage, candidate_digest, id);
    CREATE INDEX shadow_runs_by_time ON shadow_runs (at);
    -- `seq` keeps the order entries were first approved in (SQLite's rowid).
    CREATE TABLE answer_bank (
        seq         BIGINT GENERATED ALWAYS AS IDENTITY,
        pipeline    TEXT NOT NULL,
        key         TEXT NOT NULL,
        answer      TEXT NOT NULL,
        source      TEXT NOT NULL,
        approved_by TEXT NOT NULL,
        request_id  TEXT,
        updated_at  BIGINT NOT NULL,
        PRIMARY KEY (pipeline, key)
    );
    CREATE TABLE feedback (
        id         BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
        at         BIGINT NOT NULL,
        kind       TEXT NOT NULL
                   CHECK (kind IN ('rating', 'correction', 'resolution', 'proposal')),
        request_id TEXT NOT NULL,
        pipeline   TEXT NOT NULL,
        key        TEXT,
        input      TEXT NOT NULL,
        answer     TEXT,
        rating     TEXT CHECK (rating IN ('good', 'bad')),
        correction TEXT,
        actor      TEXT NOT NULL
    );
    CREATE TABLE jobs (
        id         TEXT PRIMARY KEY,
        pipeline   TEXT NOT NULL,
        input      TEXT NOT NULL,
        attributes TEXT NOT NULL,
        callback   TEXT,
        state      TEXT NOT NULL CHECK (state IN ('queued', 'running', 'done', 'dead')),
        runs       BIGINT NOT NULL DEFAULT 0,
        created_at BIGINT NOT NULL,
        done_at    BIGINT,
        reason     TEXT,
        team       TEXT
    );
    CREATE INDEX jobs_by_state ON jobs (state, created_at);
    CREATE TABLE callbacks (
        request_id TEXT PRIMARY KEY,
        url        TEXT NOT NULL,
        state      TEXT NOT NULL CHECK (state IN ('waiting', 'pending', 'delivered', 'failed')),
        attempts   BIGINT NOT NULL DEFAULT 0,
        next_at    BIGINT,
        created_at BIGINT NOT NULL
    );
    CREATE INDEX callbacks_due ON callbacks (state, next_at);
    CREATE TABLE deliveries (
        id         BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
        request_id TEXT NOT NULL,
        attempt    BIGINT NOT NULL,
        at         BIGINT NOT NULL,
        status     BIGINT,
        error      TEXT,
        ok         BIGINT NOT NULL
    );
    CREATE INDEX deliveries_by_request ON deliveries (request_id, id);
    CREATE INDEX deliveries_by_time ON deliveries (at);
    CREATE TABLE patterns (
        id         BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
        pipeline   TEXT NOT NULL,
        answer     TEXT NOT NULL,
        label      TEXT,
        source     TEXT NOT NULL,
        strictness DOUBLE PRECISION NOT NULL DEFAULT 0,
        created_at BIGINT NOT NULL,
        updated_at BIGINT NOT NULL
    );
    CREATE UNIQUE INDEX patterns_by_label ON patterns (pipeline, label) WHERE label IS NOT NULL;
    CREATE INDEX patterns_by_answer ON patterns (pipeline, answer);
    CREATE TABLE examples (
        id         BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
        pattern    BIGINT NOT NULL REFERENCES patterns (id) ON DELETE CASCADE,
        question   TEXT NOT NULL,
        source     TEXT NOT NULL,
        created_at BIGINT NOT NULL,
        UNIQUE (pattern, question)
    );
    CREATE TABLE example_vectors (
        example BIGINT NOT NULL REFERENCES examples (id) ON DELETE CASCADE,
        model   TEXT NOT NULL,
        vector  BYTEA NOT NULL,
        PRIMARY KEY (example, model)
    );
", "
    ALTER TABLE jobs ADD COLUMN owner TEXT, ADD COLUMN lease_until BIGINT;
"];

/// Any fixed number: the advisory lock hosts take while one of them
/// migrates, so two starting at once do not both apply a migration.
const MIGRATION_LOCK: i64 = 0x5354_5241_5441;

pub(super) fn migrate_postgres(client: &mut postgres::Client) -> anyhow::Result<()> {
    let mut tx = client.transaction()?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])?;
    tx.batch_execute("CREATE TABLE IF NOT EXISTS strata_schema (version BIGINT NOT NULL)")?;
    let applied: i64 = match tx.query_opt("SELECT version FROM strata_schema", &[])? {
        Some(row) => row.get(0),
        None => {
            tx.execute("INSERT INTO strata_schema (version) VALUES (0)", &[])?;
            0
        }
    };
    let known = POSTGRES_MIGRATIONS.len() as i64;
    if applied > known {
        anyhow::bail!(
            "the database is at schema version {applied}, newer than this build knows \
             ({known}); use a newer strata"
        );
    }
    for sql in &POSTGRES_MIGRATIONS[applied as usize..] {
        tx.batch_execute(sql)?;
    }
    tx.execute("UPDATE strata_schema SET version = $1", &[&known])?;
    tx.commit()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use rusqlite::Connection;

    use super::{MIGRATIONS, migrate};

    const INSERT: &str = "INSERT INTO requests (id, pipeline, generation, status, input,
                          attributes, trace, created_at)
                          VALUES (?1, 'p', 1, ?2, 'q', '{}', '[]', 0)";

    #[test]
    fn the_status_check_builds_no_table_per_insert_and_still_refuses() {
        let mut conn = Connection::open_in_memory().unwrap();
        // A database from before the edit, with a record in it.
        conn.execute_batch(&MIGRATIONS[..MIGRATIONS.len() - 1].join(";"))
            .unwrap();
        conn.pragma_update(None, "user_version", MIGRATIONS.len() - 1)
            .unwrap();
        conn.execute(INSERT, ["before", "answered"]).unwrap();
        let opcodes = |conn: &Connection| -> Vec<String> {
            let mut explain = conn.prepare(&format!("EXPLAIN {INSERT}")).unwrap();
            explain
                .query_map(["x", "answered"], |row| row.get::<_, String>(1))
                .unwrap()
                .map(Result::unwrap)
                .collect()
        };
        assert!(opcodes(&conn).iter().any(|op| op == "OpenEphemeral"));

        migrate(&mut conn).unwrap();
        assert!(!opcodes(&conn).iter().any(|op| op == "OpenEphemeral"));
        let kept: String = conn
            .query_row(
                "SELECT status FROM requests WHERE id = 'before'",
                [],
                |row| row.get(0),
            )
            .unwrap();
        assert_eq!(kept, "answered");
        for status in ["answered", "escalated", "rejected", "failed"] {
            conn.execute(INSERT, [status, status]).unwrap();
        }
        let refused = conn.execute(INSERT, ["bad", "maybe"]).unwrap_err();
        assert!(refused.to_string().contains("CHECK"), "{refused}");
        for table in ["requests", "tickets", "jobs", "callbacks"] {
            let sql: String = conn
                .query_row(
                    "SELECT sql FROM sqlite_schema WHERE type = 'table' AND name = ?1",
                    [table],
                    |row| row.get(0),
                )
                .unwrap();
            // An `IN` of two values is compared in place; of more, it is
            // a temporary table.
            let long_in = sql
                .split(" IN (")
                .skip(1)
                .any(|list| list.split(')').next().unwrap().matches(',').count() > 1);
            assert!(sql.contains("CHECK (") && !long_in, "{sql}");
        }
    }
}
