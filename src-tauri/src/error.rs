//! The one error type commands return, serialized for the window as
//! `{ message, fields: [{ field, message }] }`.

use serde::ser::SerializeStruct;
use serde::Serialize;

/// A rejected value, addressed to the settings field that holds it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FieldMessage {
    /// The dotted config key the form field edits.
    pub field: String,
    pub message: String,
}

#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    /// The window sent something no form or poll produces.
    #[error("invalid request: {0}")]
    Invalid(String),
    #[error("{0}")]
    NoEngine(String),
    /// Values the config refused; nothing was applied or written.
    #[error("{message}")]
    Fields {
        message: String,
        fields: Vec<FieldMessage>,
    },
    #[error("{0}")]
    Failed(String),
}

impl CommandError {
    pub fn invalid(msg: impl Into<String>) -> CommandError {
        CommandError::Invalid(msg.into())
    }
}

impl Serialize for CommandError {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let none = Vec::new();
        let fields = match self {
            CommandError::Fields { fields, .. } => fields,
            _ => &none,
        };
        let mut st = s.serialize_struct("CommandError", 2)?;
        st.serialize_field("message", &self.to_string())?;
        st.serialize_field("fields", fields)?;
        st.end()
    }
}
