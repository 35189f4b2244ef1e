//! The TapTalk request fields, under their TapTalk names, with the numeric codes
//! TapTalk uses in validation errors (`taptalk-api.md`, "Request").

use std::fmt;

/// One field of the auth-ticket request body.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Field {
    UserIpAddress,
    UserAgent,
    UserPlatform,
    UserDeviceId,
    XcUserId,
    FullName,
    Email,
    Phone,
    Username,
    PhotoThumbnailUrl,
    PhotoFullsizeUrl,
    UserRoleCode,
}

impl Field {
    /// Every field, in code order (101..=112).
    pub const ALL: [Field; 12] = [
        Field::UserIpAddress,
        Field::UserAgent,
        Field::UserPlatform,
        Field::UserDeviceId,
        Field::XcUserId,
        Field::FullName,
        Field::Email,
        Field::Phone,
        Field::Username,
        Field::PhotoThumbnailUrl,
        Field::PhotoFullsizeUrl,
        Field::UserRoleCode,
    ];

    /// The JSON name, exactly as TapTalk spells it.
    pub fn name(self) -> &'static str {
        match self {
            Field::UserIpAddress => "userIPAddress",
            Field::UserAgent => "userAgent",
            Field::UserPlatform => "userPlatform",
            Field::UserDeviceId => "userDeviceID",
            Field::XcUserId => "xcUserID",
            Field::FullName => "fullName",
            Field::Email => "email",
            Field::Phone => "phone",
            Field::Username => "username",
            Field::PhotoThumbnailUrl => "photoThumbnailURL",
            Field::PhotoFullsizeUrl => "photoFullsizeURL",
            Field::UserRoleCode => "userRoleCode",
        }
    }

    /// TapTalk's numeric code for the field (101..=112).
    pub fn code(self) -> u16 {
        101 + Field::ALL
            .iter()
            .position(|f| *f == self)
            .unwrap_or_default() as u16
    }

    /// Whether TapTalk requires the field.
    pub fn is_required(self) -> bool {
        self.code() <= 106
    }

    /// The longest value (in characters) the worker forwards for this field.
    ///
    /// TapTalk documents only the `xcUserID` limit (50); the others are generous
    /// bounds that keep one event from carrying megabytes in a single field.
    pub fn max_chars(self) -> usize {
        match self {
            Field::XcUserId => 50,
            Field::UserAgent => 1024,
            Field::PhotoThumbnailUrl | Field::PhotoFullsizeUrl => 2048,
            _ => 255,
        }
    }

    /// Looks a field up by its JSON name or by its code (`"105"`), as TapTalk may
    /// put either in `error.field`.
    pub fn lookup(name_or_code: &str) -> Option<Field> {
        let key = name_or_code.trim();
        Field::ALL
            .into_iter()
            .find(|f| f.name() == key || key.parse::<u16>().is_ok_and(|code| code == f.code()))
    }
}

impl fmt::Display for Field {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.name(), self.code())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_follow_the_taptalk_table() {
        assert_eq!(Field::UserIpAddress.code(), 101);
        assert_eq!(Field::XcUserId.code(), 105);
        assert_eq!(Field::FullName.code(), 106);
        assert_eq!(Field::UserRoleCode.code(), 112);
        assert!(Field::FullName.is_required());
        assert!(!Field::Email.is_required());
    }

    #[test]
    fn lookup_accepts_names_and_codes() {
        assert_eq!(Field::lookup("xcUserID"), Some(Field::XcUserId));
        assert_eq!(Field::lookup("105"), Some(Field::XcUserId));
        assert_eq!(
            Field::lookup("photoFullsizeURL"),
            Some(Field::PhotoFullsizeUrl)
        );
        assert_eq!(Field::lookup("xcuserid"), None);
        assert_eq!(Field::lookup("100"), None);
        assert_eq!(Field::lookup(""), None);
    }
}
