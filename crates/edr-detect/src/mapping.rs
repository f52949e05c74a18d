//! From Sigma's Sysmon-style field names to our ECS names, as a Sigma
//! processing pipeline applied to every rule at load time, so evaluation
//! reads our events as they are.

use rsigma_eval::pipeline::{parse_pipeline, Pipeline};

/// Sigma field → ECS field. Besides the names the built-in rules use, the
/// ones SigmaHQ's Linux and macOS rules use; a name mapped to a field our
/// collectors do not fill (yet) simply never matches.
pub const FIELD_MAP: &[(&str, &str)] = &[
    ("Image", "process.executable"),
    ("CommandLine", "process.command_line"),
    ("ParentImage", "process.parent.executable"),
    ("ParentCommandLine", "process.parent.command_line"),
    ("User", "user.name"),
    ("ParentUser", "process.parent.user.name"),
    ("CurrentDirectory", "process.working_directory"),
    ("ProcessId", "process.pid"),
    ("ParentProcessId", "process.parent.pid"),
    ("OriginalFileName", "process.pe.original_file_name"),
    ("Product", "process.pe.product"),
    ("Description", "process.pe.description"),
    ("Company", "process.pe.company"),
    ("LogonId", "user.id"),
    ("TargetFilename", "file.path"),
    ("SourceFilename", "edr.original_path"),
    ("DestinationIp", "destination.ip"),
    ("DestinationPort", "destination.port"),
    ("DestinationHostname", "destination.domain"),
    ("SourceIp", "source.ip"),
    ("SourcePort", "source.port"),
    ("SourceHostname", "source.domain"),
    ("Protocol", "network.transport"),
    ("Initiated", "network.direction"),
    ("Computer", "host.name"),
];

/// The pipeline as YAML, built from [`FIELD_MAP`]. `Initiated` is a
/// boolean in Sysmon and a direction in ECS: its values are mapped first,
/// while the field still has its Sigma name.
pub fn pipeline_yaml() -> String {
    let mut y = String::from(
        "name: edr-agent ECS fields\npriority: 10\ntransformations:\n  \
         - id: initiated_to_direction\n    type: map_string\n    mapping:\n      \
         'true': outbound\n      'false': inbound\n    field_name_conditions:\n      \
         - type: include_fields\n        fields: [Initiated]\n  \
         - id: sysmon_to_ecs\n    type: field_name_mapping\n    mapping:\n",
    );
    for (from, to) in FIELD_MAP {
        y.push_str(&format!("      {from}: {to}\n"));
    }
    y
}

/// The compiled pipeline.
pub fn pipeline() -> Result<Pipeline, rsigma_eval::EvalError> {
    parse_pipeline(&pipeline_yaml())
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_pipeline_parses() {
        let p = super::pipeline().expect("pipeline parses");
        assert_eq!(p.transformations.len(), 2);
    }
}
