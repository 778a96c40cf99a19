//! API tokens of the local backend: random, shown once, stored as SHA-256 digests. A digest of a
//! 256-bit random secret needs no slow hash: there is nothing to guess.

use ring::{
    digest,
    rand::{SecureRandom, SystemRandom},
};
use rusqlite::{Connection, OptionalExtension, params};

use crate::{caller::Role, validate};

const PREFIX: &str = "dlc_";

#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("{0}")]
    InvalidName(validate::FieldError),
    #[error("a token named {0:?} exists already; choose another name or revoke that one first")]
    Exists(String),
    #[error("the system's random source failed")]
    Random,
    #[error("the token database: {0}")]
    Database(#[from] rusqlite::Error),
}

/// A token as listed: never its secret, which is stored nowhere.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenInfo {
    pub name: String,
    pub role: Role,
    pub created_at: String,
}

pub fn digest_hex(token: &str) -> String {
    digest::digest(&digest::SHA256, token.as_bytes())
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Creates a token and returns its secret, which is stored nowhere.
pub fn create(conn: &Connection, name: &str, role: Role) -> Result<String, TokenError> {
    validate::name("name", name).map_err(TokenError::InvalidName)?;
    let mut secret = [0u8; 32];
    SystemRandom::new()
        .fill(&mut secret)
        .map_err(|_| TokenError::Random)?;
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
        return Err(TokenError::Exists(name.to_owned()));
    }
    Ok(token)
}

/// Every token, by name.
pub fn list(conn: &Connection) -> Result<Vec<TokenInfo>, TokenError> {
    let mut statement = conn.prepare("SELECT name, role, created_at FROM tokens ORDER BY name")?;
    let rows = statement.query_map([], |row| {
        Ok((
            row.get::<_, String>(0)?,
            row.get::<_, String>(1)?,
            row.get::<_, String>(2)?,
        ))
    })?;
    let mut tokens = Vec::new();
    for row in rows {
        let (name, role, created_at) = row?;
        // A role this console does not know (a newer console's) is listed as the least one.
        let role = role.parse().unwrap_or(Role::Viewer);
        tokens.push(TokenInfo {
            name,
            role,
            created_at,
        });
    }
    Ok(tokens)
}

/// Revokes a token: its digest is deleted, so the secret stops working at the next request.
/// Returns whether there was one of that name.
pub fn revoke(conn: &Connection, name: &str) -> Result<bool, TokenError> {
    Ok(conn.execute("DELETE FROM tokens WHERE name = ?1", params![name])? > 0)
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

#[cfg(test)]
mod tests {
    use super::*;

    fn database() -> Connection {
        let mut conn = Connection::open_in_memory().unwrap();
        crate::local::db::migrate(&mut conn).unwrap();
        conn
    }

    #[test]
    fn a_revoked_token_no_longer_authenticates_and_is_not_listed() {
        let conn = database();
        let secret = create(&conn, "ci-bot", Role::Operator).unwrap();
        assert_eq!(
            lookup(&conn, &secret).unwrap(),
            Some(("ci-bot".to_owned(), Role::Operator))
        );
        assert_eq!(list(&conn).unwrap().len(), 1);
        assert!(revoke(&conn, "ci-bot").unwrap());
        assert_eq!(lookup(&conn, &secret).unwrap(), None);
        assert!(list(&conn).unwrap().is_empty());
        assert!(!revoke(&conn, "ci-bot").unwrap());
    }

    #[test]
    fn a_second_token_of_the_same_name_is_refused() {
        let conn = database();
        create(&conn, "alice", Role::Viewer).unwrap();
        assert!(matches!(
            create(&conn, "alice", Role::Admin),
            Err(TokenError::Exists(_))
        ));
    }
}
