//! [`RecordedParam`]: sends a parameter exactly as it was recorded: the same
//! binary bytes (or NULL), with the statement prepared for the same type oid.

use std::error::Error;

use bytes::BytesMut;
use postgres_types::{to_sql_checked, IsNull, Kind, ToSql, Type};

use crate::entry::SourceParam;

/// A recorded parameter, as a `ToSql` that copies its bytes.
#[derive(Debug)]
pub(crate) struct RecordedParam<'a> {
    type_oid: u32,
    bytes: Option<&'a [u8]>,
}

impl<'a> RecordedParam<'a> {
    pub(crate) fn new(param: &'a SourceParam) -> RecordedParam<'a> {
        RecordedParam {
            type_oid: param.type_oid,
            bytes: param.bytes.as_deref().map(|b| &b[..]),
        }
    }

    /// The type to prepare the statement with: only its oid goes to the
    /// server, so a non-built-in oid needs no name.
    pub(crate) fn type_(&self) -> Type {
        Type::from_oid(self.type_oid).unwrap_or_else(|| {
            Type::new(
                format!("oid{}", self.type_oid),
                self.type_oid,
                Kind::Simple,
                String::new(),
            )
        })
    }
}

impl ToSql for RecordedParam<'_> {
    fn to_sql(
        &self,
        ty: &Type,
        out: &mut BytesMut,
    ) -> Result<IsNull, Box<dyn Error + Sync + Send>> {
        if ty.oid() != self.type_oid {
            return Err(format!(
                "recorded parameter of type oid {} bound to type {} ({})",
                self.type_oid,
                ty.name(),
                ty.oid()
            )
            .into());
        }
        match self.bytes {
            None => Ok(IsNull::Yes),
            Some(bytes) => {
                out.extend_from_slice(bytes);
                Ok(IsNull::No)
            }
        }
    }

    fn accepts(_: &Type) -> bool {
        true
    }

    to_sql_checked!();
}

/// A parameter for the report: type oid and lowercase hex (`None` for NULL).
pub(crate) fn hex(param: &SourceParam) -> Option<String> {
    param
        .bytes
        .as_ref()
        .map(|b| b.iter().map(|byte| format!("{byte:02x}")).collect())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn recorded_bytes_are_sent_unchanged_for_their_type_only() {
        let param = SourceParam {
            type_oid: 23,
            bytes: Some(serde_bytes::ByteBuf::from(vec![0, 0, 0, 42])),
        };
        let recorded = RecordedParam::new(&param);
        assert_eq!(recorded.type_(), Type::INT4);
        let mut out = BytesMut::new();
        assert!(matches!(
            recorded.to_sql_checked(&Type::INT4, &mut out).unwrap(),
            IsNull::No
        ));
        assert_eq!(&out[..], &[0, 0, 0, 42]);
        assert!(recorded.to_sql_checked(&Type::INT8, &mut out).is_err());
        assert_eq!(hex(&param).as_deref(), Some("0000002a"));
        let null = SourceParam {
            type_oid: 99_999,
            bytes: None,
        };
        let recorded = RecordedParam::new(&null);
        assert_eq!(recorded.type_().oid(), 99_999);
        assert!(matches!(
            recorded
                .to_sql_checked(&recorded.type_(), &mut out)
                .unwrap(),
            IsNull::Yes
        ));
        assert_eq!(hex(&null), None);
    }
}
