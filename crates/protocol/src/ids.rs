//! Ids as types, so a user id can never be passed where an account id is
//! wanted. Each serialises as the plain string.

use serde::{Deserialize, Serialize};

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, Default)]
        #[serde(transparent)]
        #[cfg_attr(feature = "sqlx", derive(sqlx::Type), sqlx(transparent))]
        pub struct $name(String);

        impl $name {
            /// Wraps an id.
            pub fn new(id: impl Into<String>) -> Self {
                Self(id.into())
            }

            /// The id as text.
            pub fn as_str(&self) -> &str {
                &self.0
            }

            /// The id's text, owned.
            pub fn into_string(self) -> String {
                self.0
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl From<&str> for $name {
            fn from(s: &str) -> Self {
                Self(s.to_owned())
            }
        }

        impl From<String> for $name {
            fn from(s: String) -> Self {
                Self(s)
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl PartialEq<str> for $name {
            fn eq(&self, other: &str) -> bool {
                self.0 == other
            }
        }

        impl PartialEq<&str> for $name {
            fn eq(&self, other: &&str) -> bool {
                self.0 == *other
            }
        }
    };
}

id_type!(
    /// An app key (`RC-App-Key`): the tenant all accounts and users live in.
    AppKey
);
id_type!(
    /// A public account (`mcid`; a push's `ToUserName`).
    McId
);
id_type!(
    /// A user of the app (a push's `FromUserName`; `touser` without the
    /// `@appKey`).
    UserId
);
id_type!(
    /// The platform's message id (`MsgId`); events have none.
    MsgId
);
id_type!(
    /// A menu item (`menuId`).
    MenuId
);
id_type!(
    /// Uploaded material (`media_id`).
    MediaId
);
id_type!(
    /// The id the platform gives a mass send (`msg_id`).
    MassMsgId
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_plain_strings_on_the_wire() {
        let m = McId::from("shop");
        assert_eq!(serde_json::to_string(&m).unwrap(), "\"shop\"");
        assert_eq!(serde_json::from_str::<UserId>("\"u\"").unwrap(), "u");
        assert_eq!(m.to_string(), "shop");
    }
}
