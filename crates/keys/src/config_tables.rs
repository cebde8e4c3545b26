//! Deserialising `tables`: keys are `"schema.table"`, or a schema name whose
//! value holds its tables (`[tables.public.book]`, the only form environment
//! variables can express). Both are flattened to `"schema.table"`.

use std::collections::BTreeMap;
use std::fmt;

use serde::de::{Deserializer, Error, MapAccess, Visitor};

use crate::config::TableConfig;

pub(crate) fn deserialize<'de, D>(
    deserializer: D,
) -> Result<BTreeMap<String, TableConfig>, D::Error>
where
    D: Deserializer<'de>,
{
    deserializer.deserialize_map(TablesVisitor)
}

struct TablesVisitor;

impl<'de> Visitor<'de> for TablesVisitor {
    type Value = BTreeMap<String, TableConfig>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a table of \"schema.table\" or schema -> table settings")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut tables = BTreeMap::new();
        let mut insert = |name: String, config: TableConfig| {
            if tables.contains_key(&name) {
                return Err(A::Error::custom(format!(
                    "table {name} is configured twice (as \"{name}\" and nested); use one form"
                )));
            }
            tables.insert(name, config);
            Ok(())
        };
        while let Some(key) = map.next_key::<String>()? {
            if key.contains('.') {
                let config = map.next_value::<TableConfig>()?;
                insert(key, config)?;
            } else {
                let schema = map.next_value::<BTreeMap<String, TableConfig>>()?;
                for (name, config) in schema {
                    insert(format!("{key}.{name}"), config)?;
                }
            }
        }
        Ok(tables)
    }
}
