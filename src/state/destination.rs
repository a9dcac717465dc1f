//! Which destination a state is synced to (DESIGN §10: one state serves one destination).

/// A pass whose config names another destination than the one its state is synced to: its
/// deltas would reach a destination that never had the rest, and marking them synced there
/// would hide them from the first one for good.
#[derive(Debug, Clone, thiserror::Error)]
#[error(
    "the state in {state} is synced to {recorded}, but the config's [destination] is {configured}. \
     One state serves one destination: give this destination a state of its own ([state] path or \
     url_env), or run `audience-sync resync` (every computation, no --user) to send everything \
     to it and move the state there"
)]
pub struct OtherDestination {
    pub state: String,
    pub recorded: String,
    pub configured: String,
}

impl OtherDestination {
    /// Fine when the destination `recorded` in `state` (if any) is the `configured` one.
    pub(crate) fn unless_same(state: &str, recorded: Option<String>, configured: &str) -> anyhow::Result<()> {
        match recorded {
            Some(recorded) if recorded != configured => {
                Err(OtherDestination { state: state.into(), recorded, configured: configured.into() }.into())
            }
            _ => Ok(()),
        }
    }
}
