//! Auth tokens (`--auth-token`), as etcd issues them.
//!
//! - **simple** (the default): `<16 random letters>.<raft index>`. A login goes through
//!   raft and every member registers the token when it applies the login, so any member
//!   accepts it; a token lives `--auth-token-ttl` after its last use (sliding), and a
//!   password change, the user's deletion or disabling auth ends it. Tokens are in memory:
//!   a restart ends them, and clients log in again.
//! - **jwt** (`jwt,pub-key=…,priv-key=…,sign-method=RS256,ttl=5m`): a signed token with
//!   the user name, the auth revision it was issued at and its expiry. Any member with the
//!   public key checks it; it outlives restarts, and after any auth change it is refused
//!   with `revision of auth store is old`, so the client logs in again.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use ring::rand::{SecureRandom, SystemRandom};
use serde::{Deserialize, Serialize};

use crate::error::Error;

/// etcd's default token TTL (`--auth-token-ttl`), and JWT's default `ttl`.
pub const DEFAULT_TTL: Duration = Duration::from_secs(300);
/// The longest TTL taken: deadlines past it would overflow the clock's arithmetic.
const MAX_TTL: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

/// Who a token names; `revision` is the auth revision it was issued at (JWT only: a
/// simple token is as current as the member that holds it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenInfo {
    pub user: Arc<str>,
    pub revision: Option<u64>,
}

/// How this member issues and checks tokens.
pub enum TokenProvider {
    Simple(SimpleTokens),
    Jwt(JwtTokens),
}

impl Default for TokenProvider {
    fn default() -> Self {
        TokenProvider::Simple(SimpleTokens::new(DEFAULT_TTL))
    }
}

/// 16 random ASCII letters, from the operating system's random source.
pub fn random_prefix() -> String {
    const LETTERS: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ";
    let mut bytes = [0u8; 16];
    // The system source does not fail on the platforms Cairn runs on; if it ever did, a
    // predictable token must not come of it.
    SystemRandom::new()
        .fill(&mut bytes)
        .expect("the system's random source failed");
    bytes
        .iter()
        .map(|b| LETTERS[*b as usize % LETTERS.len()] as char)
        .collect()
}

impl TokenProvider {
    /// Parses `--auth-token` (`simple`, or `jwt,k=v,…`); `ttl` is `--auth-token-ttl`.
    pub fn parse(spec: &str, ttl: Duration) -> Result<TokenProvider, String> {
        let mut parts = spec.split(',');
        match parts.next().unwrap_or("") {
            "simple" | "" => Ok(TokenProvider::Simple(SimpleTokens::new(if ttl.is_zero() {
                DEFAULT_TTL
            } else {
                ttl.min(MAX_TTL)
            }))),
            "jwt" => JwtTokens::from_options(parts).map(TokenProvider::Jwt),
            other => Err(format!(
                "--auth-token {other:?}: unknown token type (use simple or jwt)"
            )),
        }
    }

    /// Whether logins go through raft to register a simple token everywhere.
    pub fn is_simple(&self) -> bool {
        matches!(self, TokenProvider::Simple(_))
    }

    /// Registers the simple token of a login applied at `index`; returns it.
    pub fn assign_simple(&self, prefix: &str, index: u64, user: &str) -> String {
        let token = format!("{prefix}.{index}");
        if let TokenProvider::Simple(s) = self {
            s.assign(&token, user);
        }
        token
    }

    /// A token for `user` valid on this member only (JWT: anywhere), for a service of the
    /// member that acts as its caller through its own client port. A simple one lives until
    /// [`TokenProvider::forget`]: the call it serves may wait longer than a TTL.
    pub fn local(&self, user: &str, revision: u64) -> Result<String, Error> {
        match self {
            TokenProvider::Simple(s) => {
                let token = format!("{}.0", random_prefix());
                s.assign_for(&token, user, MAX_TTL);
                Ok(token)
            }
            TokenProvider::Jwt(j) => j.sign(user, revision),
        }
    }

    /// Ends a token [`TokenProvider::local`] made.
    pub fn forget(&self, token: &str) {
        if let TokenProvider::Simple(s) = self {
            s.map().remove(token);
        }
    }

    /// A JWT for `user` at auth revision `revision` (simple tokens come from raft).
    pub fn sign(&self, user: &str, revision: u64) -> Result<String, Error> {
        match self {
            TokenProvider::Jwt(j) => j.sign(user, revision),
            TokenProvider::Simple(_) => Err(Error::Storage("simple tokens are not signed".into())),
        }
    }

    /// The raft index a simple token was issued at: a member must have applied it before it
    /// can know the token.
    pub fn simple_index(&self, token: &str) -> Option<u64> {
        match self {
            TokenProvider::Simple(_) => token.rsplit_once('.')?.1.parse().ok(),
            TokenProvider::Jwt(_) => None,
        }
    }

    /// Who `token` names, or `invalid auth token`.
    pub fn check(&self, token: &str) -> Result<TokenInfo, Error> {
        match self {
            TokenProvider::Simple(s) => s
                .info(token)
                .map(|user| TokenInfo {
                    user,
                    revision: None,
                })
                .ok_or(Error::InvalidAuthToken),
            TokenProvider::Jwt(j) => j.check(token),
        }
    }

    pub fn invalidate_user(&self, user: &str) {
        if let TokenProvider::Simple(s) = self {
            s.invalidate_user(user);
        }
    }

    pub fn clear(&self) {
        if let TokenProvider::Simple(s) = self {
            s.clear();
        }
    }

    /// Drops expired simple tokens.
    pub fn sweep(&self) {
        if let TokenProvider::Simple(s) = self {
            s.sweep(Instant::now());
        }
    }
}

/// etcd's simple tokens; see the module docs.
pub struct SimpleTokens {
    ttl: Duration,
    tokens: Mutex<HashMap<String, (Arc<str>, Instant)>>,
}

impl SimpleTokens {
    pub fn new(ttl: Duration) -> SimpleTokens {
        SimpleTokens {
            ttl,
            tokens: Mutex::default(),
        }
    }

    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<String, (Arc<str>, Instant)>> {
        // Each operation is one map call: consistent after a panic.
        self.tokens.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn assign(&self, token: &str, user: &str) {
        self.assign_for(token, user, self.ttl);
    }

    fn assign_for(&self, token: &str, user: &str, ttl: Duration) {
        let now = Instant::now();
        let expires = now.checked_add(ttl).unwrap_or(now + self.ttl);
        self.map().insert(token.to_string(), (user.into(), expires));
    }

    /// The token's user; each use moves its expiry to a TTL from now.
    fn info(&self, token: &str) -> Option<Arc<str>> {
        let now = Instant::now();
        let mut map = self.map();
        let (user, expires) = map.get_mut(token)?;
        if *expires <= now {
            map.remove(token);
            return None;
        }
        *expires = (*expires).max(now + self.ttl);
        Some(user.clone())
    }

    fn invalidate_user(&self, user: &str) {
        self.map().retain(|_, (u, _)| &**u != user);
    }

    fn clear(&self) {
        self.map().clear();
    }

    fn sweep(&self, now: Instant) {
        self.map().retain(|_, (_, expires)| *expires > now);
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct Claims {
    username: String,
    revision: u64,
    exp: u64,
}

/// etcd's JWT tokens; see the module docs.
pub struct JwtTokens {
    alg: Algorithm,
    /// None: verify only (no private key): logins here fail.
    signing: Option<EncodingKey>,
    verifying: DecodingKey,
    ttl: Duration,
}

impl JwtTokens {
    /// From `pub-key=…,priv-key=…,sign-method=…,ttl=…` (etcd's options).
    fn from_options<'a>(options: impl Iterator<Item = &'a str>) -> Result<JwtTokens, String> {
        let mut opts: HashMap<&str, &str> = HashMap::new();
        for o in options {
            let (k, v) = o
                .split_once('=')
                .ok_or_else(|| format!("auth: invalid auth options ({o:?} is not key=value)"))?;
            if opts.insert(k, v).is_some() {
                return Err(format!("auth: invalid auth options ({k} given twice)"));
            }
        }
        let method = opts.get("sign-method").copied().unwrap_or("");
        let alg: Algorithm = method
            .parse()
            .map_err(|_| format!("auth: invalid auth signature method {method:?}"))?;
        let ttl = match opts.get("ttl") {
            Some(t) => crate::config::parse_duration(t)?.min(MAX_TTL),
            None => DEFAULT_TTL,
        };
        let read = |k: &str| -> Result<Option<Vec<u8>>, String> {
            opts.get(k)
                .map(|path| std::fs::read(path).map_err(|e| format!("auth: {k} {path}: {e}")))
                .transpose()
        };
        let (public, private) = (read("pub-key")?, read("priv-key")?);
        let bad = |e: jsonwebtoken::errors::Error| format!("auth: key for {method}: {e}");
        let (signing, verifying) = match alg {
            Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512 => {
                // As etcd: the private key file's bytes are the shared secret.
                let secret = private.ok_or("auth: missing key data (priv-key)")?;
                (
                    Some(EncodingKey::from_secret(&secret)),
                    DecodingKey::from_secret(&secret),
                )
            }
            Algorithm::ES256 | Algorithm::ES384 => {
                let public = public.ok_or("auth: missing key data (pub-key)")?;
                let signing = private
                    .map(|p| EncodingKey::from_ec_pem(&p))
                    .transpose()
                    .map_err(bad)?;
                (signing, DecodingKey::from_ec_pem(&public).map_err(bad)?)
            }
            Algorithm::EdDSA => {
                let public = public.ok_or("auth: missing key data (pub-key)")?;
                let signing = private
                    .map(|p| EncodingKey::from_ed_pem(&p))
                    .transpose()
                    .map_err(bad)?;
                (signing, DecodingKey::from_ed_pem(&public).map_err(bad)?)
            }
            _ => {
                let public = public.ok_or("auth: missing key data (pub-key)")?;
                let signing = private
                    .map(|p| EncodingKey::from_rsa_pem(&p))
                    .transpose()
                    .map_err(bad)?;
                (signing, DecodingKey::from_rsa_pem(&public).map_err(bad)?)
            }
        };
        Ok(JwtTokens {
            alg,
            signing,
            verifying,
            ttl,
        })
    }

    fn sign(&self, user: &str, revision: u64) -> Result<String, Error> {
        let key = self.signing.as_ref().ok_or(Error::Unmapped(
            "auth: token signing attempted with verify-only key",
        ))?;
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let claims = Claims {
            username: user.to_string(),
            revision,
            exp: now + self.ttl.as_secs(),
        };
        jsonwebtoken::encode(&Header::new(self.alg), &claims, key)
            .map_err(|e| Error::Storage(format!("signing a token: {e}")))
    }

    fn check(&self, token: &str) -> Result<TokenInfo, Error> {
        let mut v = Validation::new(self.alg);
        v.leeway = 0;
        v.validate_exp = true;
        v.required_spec_claims = ["exp".to_string()].into_iter().collect();
        match jsonwebtoken::decode::<Claims>(token, &self.verifying, &v) {
            Ok(data) => Ok(TokenInfo {
                user: data.claims.username.into(),
                revision: Some(data.claims.revision),
            }),
            Err(e) => {
                tracing::debug!(error = %e, "refused a JWT");
                Err(Error::InvalidAuthToken)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_simple_token_slides_its_expiry_and_dies_with_its_user() {
        let t = TokenProvider::Simple(SimpleTokens::new(Duration::from_secs(60)));
        let a = t.assign_simple("abc", 7, "alice");
        assert_eq!(a, "abc.7");
        assert_eq!(t.simple_index(&a), Some(7));
        assert_eq!(&*t.check(&a).expect("valid").user, "alice");
        t.invalidate_user("alice");
        assert_eq!(t.check(&a), Err(Error::InvalidAuthToken));
        let short = SimpleTokens::new(Duration::ZERO);
        short.assign("x.1", "bob");
        assert!(short.info("x.1").is_none(), "expired at once");
    }

    #[test]
    fn prefixes_are_sixteen_letters_and_differ() {
        let (a, b) = (random_prefix(), random_prefix());
        assert_eq!(a.len(), 16);
        assert!(a.chars().all(|c| c.is_ascii_alphabetic()));
        assert_ne!(a, b);
    }

    #[test]
    fn a_jwt_carries_the_user_and_revision_and_a_forged_one_is_refused() {
        let dir = tempfile::tempdir().expect("dir");
        let secret = dir.path().join("secret");
        std::fs::write(&secret, b"a shared secret").expect("write");
        let spec = format!("jwt,priv-key={},sign-method=HS256,ttl=1m", secret.display());
        let t = TokenProvider::parse(&spec, DEFAULT_TTL).expect("jwt");
        let token = t.sign("carol", 42).expect("sign");
        assert_eq!(
            t.check(&token),
            Ok(TokenInfo {
                user: "carol".into(),
                revision: Some(42)
            })
        );
        let mut forged = token.clone();
        forged.pop();
        assert_eq!(t.check(&forged), Err(Error::InvalidAuthToken));
        assert!(TokenProvider::parse("jwt,sign-method=XX1", DEFAULT_TTL).is_err());
        assert!(TokenProvider::parse("jwt,sign-method=RS256", DEFAULT_TTL).is_err());
    }
}
