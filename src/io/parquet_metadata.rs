//! Key-value metadata added to a Parquet file already written: a cluster's executors write
//! scored files without it (DataFusion 55's plan serialization drops it on the way), so the
//! client streams the file once more with the model's facts in its footer.

use std::fs::File;
use std::path::Path;

use anyhow::{Context, Result};
use datafusion::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use datafusion::parquet::arrow::ArrowWriter;
use datafusion::parquet::file::metadata::KeyValue;
use datafusion::parquet::file::properties::WriterProperties;

use crate::sql::session::WRITE_ROW_GROUP_ROWS;

/// Copies the Parquet file `src` to `dst` batch by batch (memory stays at one row group), with
/// `metadata` added to its key-value metadata; compression as `src` had it. Returns the rows.
pub fn copy_with_metadata(src: &Path, dst: &Path, metadata: &[(String, String)]) -> Result<u64> {
    let input = File::open(src).with_context(|| format!("reading {}", src.display()))?;
    let builder =
        ParquetRecordBatchReaderBuilder::try_new(input).with_context(|| format!("reading {}", src.display()))?;
    let compression =
        builder.metadata().row_groups().first().and_then(|g| g.columns().first()).map(|c| c.compression());
    let mut kv: Vec<KeyValue> = builder
        .metadata()
        .file_metadata()
        .key_value_metadata()
        .into_iter()
        .flatten()
        // The writer stores the Arrow schema itself.
        .filter(|e| e.key != "ARROW:schema" && !metadata.iter().any(|(k, _)| *k == e.key))
        .cloned()
        .collect();
    kv.extend(metadata.iter().map(|(k, v)| KeyValue::new(k.clone(), v.clone())));
    let mut props = WriterProperties::builder()
        .set_max_row_group_row_count(Some(WRITE_ROW_GROUP_ROWS))
        .set_key_value_metadata(Some(kv));
    if let Some(c) = compression {
        props = props.set_compression(c);
    }
    let schema = builder.schema().clone();
    let reader = builder.build()?;
    let output = File::create(dst).with_context(|| format!("writing {}", dst.display()))?;
    let mut writer = ArrowWriter::try_new(output, schema, Some(props.build()))?;
    let mut rows = 0u64;
    for batch in reader {
        let batch = batch?;
        rows += batch.num_rows() as u64;
        writer.write(&batch)?;
    }
    writer.close().with_context(|| format!("writing {}", dst.display()))?;
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use datafusion::arrow::array::{Float32Array, Int64Array, RecordBatch};
    use datafusion::arrow::datatypes::{DataType, Field, Schema};
    use datafusion::parquet::file::reader::{FileReader, SerializedFileReader};

    use super::*;

    #[test]
    fn rows_and_old_metadata_are_kept_and_new_metadata_added() {
        let dir = tempfile::tempdir().unwrap();
        let (src, dst) = (dir.path().join("a.parquet"), dir.path().join("b.parquet"));
        let schema = Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int64, false),
            Field::new("score", DataType::Float32, true),
        ]));
        let batch = RecordBatch::try_new(
            schema.clone(),
            vec![
                Arc::new(Int64Array::from_iter_values(0..1000)),
                Arc::new(Float32Array::from_iter((0..1000).map(|i| (i % 7 != 0).then_some(i as f32 / 10.0)))),
            ],
        )
        .unwrap();
        let props = WriterProperties::builder()
            .set_key_value_metadata(Some(vec![KeyValue::new("kept".into(), "yes".to_string())]))
            .build();
        let mut writer = ArrowWriter::try_new(File::create(&src).unwrap(), schema, Some(props)).unwrap();
        writer.write(&batch).unwrap();
        writer.close().unwrap();

        let facts = vec![("skyscore.dtype".to_string(), "f32".to_string())];
        assert_eq!(copy_with_metadata(&src, &dst, &facts).unwrap(), 1000);
        let reader = SerializedFileReader::new(File::open(&dst).unwrap()).unwrap();
        let kv = reader.metadata().file_metadata().key_value_metadata().cloned().unwrap_or_default();
        let get = |k: &str| kv.iter().find(|e| e.key == k).and_then(|e| e.value.clone());
        assert_eq!(get("kept").as_deref(), Some("yes"));
        assert_eq!(get("skyscore.dtype").as_deref(), Some("f32"));
        let copied: Vec<RecordBatch> = ParquetRecordBatchReaderBuilder::try_new(File::open(&dst).unwrap())
            .unwrap()
            .build()
            .unwrap()
            .map(|b| b.unwrap())
            .collect();
        assert_eq!(datafusion::arrow::compute::concat_batches(&copied[0].schema(), &copied).unwrap(), batch);
    }
}
