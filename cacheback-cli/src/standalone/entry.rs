//! `cacheback entry KEY`: one entry by its raw key (`prefix:job:digest`, as logs and
//! `JobHandle::key` write it): its windows, age, generation, size, and the key's claim and
//! failure state. Read-only: two round trips, no claim taken.

use cacheback::store::{Key, Store};

use super::Target;
use crate::entry_view::EntryView;
use crate::exit::{Failed, OK, Outcome};
use crate::output::{now, print_json};

#[derive(Debug, clap::Args)]
pub(super) struct EntryArgs {
    /// The key: `prefix:job:digest` (the Redis key name with its braces works too).
    key: String,
}

pub(super) async fn run(target: &Target, args: EntryArgs, json: bool) -> Outcome {
    let key = Key::parse(&args.key).map_err(Failed::usage)?;
    if !target.prefix.is_empty() && key.prefix() != target.prefix {
        return Err(Failed::usage(format!(
            "the key's prefix `{}` is not the fleet's prefix `{}`",
            key.prefix(),
            target.prefix
        )));
    }
    let store = target.store()?;
    let now = now();
    let entry = store.get(key).await?;
    let claim = store.claim_state(key, now).await?;
    let Some(entry) = entry else {
        return Err(Failed::not_found(format!("no entry at key `{key}`")));
    };
    let view = EntryView::new(
        key.to_string(),
        entry.meta,
        entry.is_tombstone(),
        claim,
        now,
    );
    if json {
        print_json(&view)?;
    } else {
        print!("{}", view.render());
    }
    Ok(OK)
}
