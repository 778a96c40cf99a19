//! The local backend's SQLite file: opening it (WAL, foreign keys, a busy timeout) and bringing
//! its schema up to date. Each migration runs once, in order, in its own transaction; the file's
//! `user_version` says how many have run.

use std::path::Path;

use rusqlite::Connection;

/// Append only: never edit a migration that has shipped, add the next one.
const MIGRATIONS: &[&str] = &[
    // 1: namespaces, links, their audit trail, API tokens.
    r#"
    CREATE TABLE namespaces (
        name       TEXT PRIMARY KEY,
        created_at TEXT NOT NULL
    ) STRICT;
    CREATE TABLE links (
        namespace             TEXT NOT NULL REFERENCES namespaces(name),
        name                  TEXT NOT NULL,
        device_host           TEXT NOT NULL,
        device_port           INTEGER NOT NULL,
        port                  INTEGER NOT NULL,
        allowed_source_ranges TEXT NOT NULL,
        ttl_seconds           INTEGER,
        expires_at            TEXT,
        enabled               INTEGER NOT NULL,
        max_connections       INTEGER,
        idle_timeout_seconds  INTEGER,
        description           TEXT,
        version               INTEGER NOT NULL,
        created_at            TEXT NOT NULL,
        updated_at            TEXT NOT NULL,
        expired_at            TEXT,
        failure               TEXT,
        PRIMARY KEY (namespace, name)
    ) STRICT;
    CREATE UNIQUE INDEX links_by_port ON links(port);
    CREATE TABLE events (
        seq       INTEGER PRIMARY KEY AUTOINCREMENT,
        at        TEXT NOT NULL,
        namespace TEXT NOT NULL,
        link      TEXT NOT NULL,
        kind      TEXT NOT NULL,
        actor     TEXT NOT NULL,
        detail    TEXT
    ) STRICT;
    CREATE INDEX events_by_link ON events(namespace, link, seq);
    CREATE TABLE tokens (
        name       TEXT PRIMARY KEY,
        role       TEXT NOT NULL,
        sha256     TEXT NOT NULL UNIQUE,
        created_at TEXT NOT NULL
    ) STRICT;
    "#,
];

pub const DATABASE_FILE: &str = "console.db";

pub fn open(data_dir: &Path) -> anyhow::Result<Connection> {
    use anyhow::Context as _;
    std::fs::create_dir_all(data_dir)
        .with_context(|| format!("creating the data directory {}", data_dir.display()))?;
    let path = data_dir.join(DATABASE_FILE);
    let mut conn =
        Connection::open(&path).with_context(|| format!("opening {}", path.display()))?;
    // WAL lets readers run beside the writer; the busy timeout covers a second process (token create).
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    migrate(&mut conn).with_context(|| format!("migrating {}", path.display()))?;
    Ok(conn)
}

pub fn migrate(conn: &mut Connection) -> anyhow::Result<()> {
    let applied: i64 = conn.pragma_query_value(None, "user_version", |row| row.get(0))?;
    let applied = usize::try_from(applied).unwrap_or(usize::MAX);
    if applied > MIGRATIONS.len() {
        anyhow::bail!(
            "the database has schema version {applied}, newer than this console knows ({}); run the newer console",
            MIGRATIONS.len()
        );
    }
    for (index, sql) in MIGRATIONS.iter().enumerate().skip(applied) {
        let tx = conn.transaction()?;
        tx.execute_batch(sql)?;
        tx.pragma_update(None, "user_version", i64::try_from(index + 1)?)?;
        tx.commit()?;
        tracing::info!(version = index + 1, "database schema migrated");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migrating_twice_is_a_no_op_and_leaves_the_latest_version() {
        let mut conn = Connection::open_in_memory().unwrap();
        migrate(&mut conn).unwrap();
        migrate(&mut conn).unwrap();
        let version: i64 = conn
            .pragma_query_value(None, "user_version", |row| row.get(0))
            .unwrap();
        assert_eq!(version, MIGRATIONS.len() as i64);
    }
}
