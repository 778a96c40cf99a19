//! API tokens of the local backend: random, shown once, stored as SHA-256 digests. A digest of a
//! 256-bit random secret needs no slow hash: there is nothing to guess.

use ring::{
    digest,
    rand::{SecureRandom, SystemRandom},
};
use rusqlite::{Connection, OptionalExtension, params};

use crate::{caller::Role, validate};

const PREFIX: &str = "dlc_";

pub fn digest_hex(token: &str) -> String {
    digest::digest(&digest::SHA256, token.as_bytes())
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Creates a token and returns its secret, which is stored nowhere.
pub fn create(conn: &Connection, name: &str, role: Role) -> anyhow::Result<String> {
    validate::name("name", name).map_err(|e| anyhow::anyhow!("{e}"))?;
    let mut secret = [0u8; 32];
    SystemRandom::new()
        .fill(&mut secret)
        .map_err(|_| anyhow::anyhow!("the system's random source failed"))?;
    let token = format!(
        "{PREFIX}{}",
        secret
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    );
    let inserted = conn.execute(
        "INSERT INTO tokens (name, role, sha256, created_at) VALUES (?1, ?2, ?3, ?4)
         ON CONFLICT(name) DO NOTHING",
        params![
            name,
            role.as_str(),
            digest_hex(&token),
            crate::clock::now_rfc3339()
        ],
    )?;
    if inserted == 0 {
        anyhow::bail!("a token named {name:?} exists already; choose another name");
    }
    Ok(token)
}

/// The token's name and role, if the secret is one of ours.
pub fn lookup(conn: &Connection, token: &str) -> rusqlite::Result<Option<(String, Role)>> {
    if !token.starts_with(PREFIX) {
        return Ok(None);
    }
    conn.query_row(
        "SELECT name, role FROM tokens WHERE sha256 = ?1",
        params![digest_hex(token)],
        |row| Ok((row.get::<_, String>(0)?, row.get::<_, String>(1)?)),
    )
    .optional()
    .map(|found| found.and_then(|(name, role)| Some((name, role.parse().ok()?))))
}
