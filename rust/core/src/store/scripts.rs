//! The Lua scripts, embedded from `lua/` with their SHA1 digests computed once.

use std::sync::LazyLock;

/// One Lua script: its source and its SHA1 (for EVALSHA).
pub struct LuaScript {
    pub name: &'static str,
    pub source: &'static str,
    pub sha: String,
}

impl LuaScript {
    fn new(name: &'static str, source: &'static str) -> Self {
        LuaScript { name, source, sha: redis::Script::new(source).get_hash().to_owned() }
    }
}

pub static ACQUIRE: LazyLock<LuaScript> =
    LazyLock::new(|| LuaScript::new("acquire", include_str!("../../../../lua/acquire-n.lua")));
pub static SETTLE: LazyLock<LuaScript> =
    LazyLock::new(|| LuaScript::new("settle", include_str!("../../../../lua/settle-n.lua")));
pub static SYNC: LazyLock<LuaScript> =
    LazyLock::new(|| LuaScript::new("sync", include_str!("../../../../lua/sync-n.lua")));
pub static BREAKER_PROBE: LazyLock<LuaScript> =
    LazyLock::new(|| LuaScript::new("breaker-probe", include_str!("../../../../lua/breaker-probe-2.lua")));
pub static BREAKER_PUBLISH: LazyLock<LuaScript> =
    LazyLock::new(|| LuaScript::new("breaker-publish", include_str!("../../../../lua/breaker-publish-2.lua")));
pub static DEDUP_PUBLISH: LazyLock<LuaScript> =
    LazyLock::new(|| LuaScript::new("dedup-publish", include_str!("../../../../lua/dedup-publish-2.lua")));
pub static DEDUP_RELEASE: LazyLock<LuaScript> =
    LazyLock::new(|| LuaScript::new("dedup-release", include_str!("../../../../lua/dedup-release-1.lua")));
pub static BUDGET_RESERVE: LazyLock<LuaScript> =
    LazyLock::new(|| LuaScript::new("budget-reserve", include_str!("../../../../lua/budget-reserve-2.lua")));
pub static BUDGET_SETTLE: LazyLock<LuaScript> =
    LazyLock::new(|| LuaScript::new("budget-settle", include_str!("../../../../lua/budget-settle-2.lua")));
pub static SPEND_ADD: LazyLock<LuaScript> =
    LazyLock::new(|| LuaScript::new("spend-add", include_str!("../../../../lua/spend-add-1.lua")));
