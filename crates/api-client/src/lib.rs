//! # pubbot-api-client: the Public Service platform API, typed and signed
//!
//! An async client for all 18 endpoints of the platform's HTTP API
//! (`shared/spec/READING.md`): accounts, menus, followers, messages to one
//! user, to a batch and to all followers, and media uploads.
//!
//! **What it is for:** calling the platform correctly. Every call is signed
//! (R1/R2: fresh nonce, seconds by default), encoded as the platform wants
//! it (R12), and checked against the platform's limits *before* it leaves
//! (R9): a text over 2000 bytes or 101 batch recipients is an
//! [`Invalid`] error and no request is made. Answers are typed; the
//! document's odd key casing stays inside this crate. Errors say whether
//! trying again can help ([`Error::is_retryable`], per R10).
//!
//! **What it is not for:** deciding policy. It does not queue, rate-limit
//! or remember what was sent; retries are opt-in ([`RetryPolicy`]) and never
//! apply to sends unless asked, because the platform's sends are not
//! idempotent. The daemon owns those decisions.
//!
//! ## Routing rules
//! [`Client::send_to`], [`Client::send_to_many`] and [`Client::broadcast`]
//! pick the endpoint from the message: uploaded material (`media_id`) goes
//! to `send` / `sendall`; images and voices by URL go to the `operation/`
//! endpoints; text and news inline go to `send` and `batchsend` for users,
//! and news inline to `operation/sendall` for everyone (R8).
//!
//! ## Example
//! ```no_run
//! use pubbot_api_client::{Client, McId, Message, UserId};
//! use secrecy::SecretString;
//!
//! # async fn run() -> Result<(), pubbot_api_client::Error> {
//! let client = Client::builder("appkey", SecretString::from("secret"), "http://127.0.0.1:8090")
//!     .build()?;
//! let shop = McId::from("shop");
//! client.send_to(&shop, &UserId::from("alice"), &Message::Text("Hello".into())).await?;
//! let users: Vec<UserId> = (0..250).map(|i| UserId::from(format!("u{i}"))).collect();
//! for chunk in client.send_to_many(&shop, &users, &Message::Text("Sale!".into())).await? {
//!     if let Err(e) = chunk.result {
//!         eprintln!("{} users not reached: {e}", chunk.users.len());
//!     }
//! }
//! # Ok(()) }
//! ```

mod client;
mod error;
mod sign;
mod types;
pub mod validate;

pub use client::{http_builder, ChunkOutcome, Client, ClientBuilder, RetryPolicy};
pub use error::{Error, ErrorCode, Invalid};
/// The HTTP client type [`ClientBuilder::http_client`] takes (reqwest's), so
/// callers can share one pool without depending on reqwest themselves.
pub use reqwest::Client as HttpClient;
pub use sign::{sign, TimestampUnit};
pub use types::{
    AccountInfo, AccountProfile, Article, MassMsgId, McId, MediaId, MediaKind, MediaRef,
    MenuAction, MenuId, MenuItem, Message, NewAccount, NewMenuItem, NewsMaterial, UploadedMedia,
    UserId,
};
