//! Desktop notifications for detection alerts (their texts are the app's,
//! `edr_desktop::notices`): the freedesktop
//! `org.freedesktop.Notifications.Notify` call on the session bus, which
//! every Linux desktop's notification daemon answers.

use std::collections::HashMap;

use edr_desktop::Notice;
use zbus::zvariant::Value;

/// Shows `n`; the daemon's id for it.
pub async fn show(bus: &zbus::Connection, n: &Notice) -> zbus::Result<u32> {
    let hints: HashMap<&str, Value<'_>> = HashMap::new();
    let reply = bus
        .call_method(
            Some("org.freedesktop.Notifications"),
            "/org/freedesktop/Notifications",
            Some("org.freedesktop.Notifications"),
            "Notify",
            &(
                "EDR Agent",
                0u32,
                "",
                n.title.as_str(),
                n.body.as_str(),
                Vec::<&str>::new(),
                hints,
                -1i32,
            ),
        )
        .await?;
    reply.body().deserialize::<u32>()
}
