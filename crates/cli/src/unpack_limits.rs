//! `--max-unpacked-size` and `--max-unpacked-entries`: the bounds on what
//! one layer, build context or ADD archive may unpack to, shared by every
//! command that unpacks (`build --local`, `image run|import`, `agent`). An
//! agent hands its values to the builds it starts through the environment.

use builder::unpack::Limits;

#[derive(clap::Args, Debug, Clone)]
pub struct UnpackLimitArgs {
    /// Most bytes one layer, context or ADD archive may decompress to; a
    /// bigger one (a decompression bomb) stops with an error naming this
    /// flag. Bytes, or 64g, 512m …
    #[arg(
        long = "max-unpacked-size",
        env = Limits::SIZE_ENV,
        value_name = "SIZE",
        value_parser = parse_size,
        default_value = "64g"
    )]
    pub max_bytes: u64,
    /// Most entries (files, dirs, links) one layer, context or ADD archive
    /// may hold.
    #[arg(
        long = "max-unpacked-entries",
        env = Limits::ENTRIES_ENV,
        value_name = "N",
        default_value_t = Limits::DEFAULT_MAX_ENTRIES
    )]
    pub max_entries: u64,
}

impl UnpackLimitArgs {
    pub fn limits(&self) -> Limits {
        Limits {
            max_bytes: self.max_bytes,
            max_entries: self.max_entries,
        }
    }
}

pub fn parse_size(s: &str) -> Result<u64, String> {
    crate::build_args::parse_bytes(s).ok_or_else(|| format!("{s:?}: expected bytes or 8g, 512m …"))
}
