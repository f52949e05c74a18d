//! The event model every other crate shares: [`event::Event`] (ECS-shaped,
//! serialized as ECS JSON), [`event::Timestamp`], the `process.entity_id`
//! derivation, and credential redaction applied before an event is queued.

pub mod capture;
pub mod event;
pub mod redact;

pub use event::{Action, Event, EventType, Timestamp};
