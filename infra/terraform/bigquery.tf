# The topic log: one row per published message, written by the BigQuery adapter
# (infra/k8s/bq-adapter) with streaming inserts. Partitioned by day on the publish time, so
# queries over a time range read only those days; clustered by topic.
resource "google_bigquery_dataset" "topic_log" {
  dataset_id                 = var.bigquery_dataset_id
  location                   = var.bigquery_location
  description                = "mcloudtt topic log"
  delete_contents_on_destroy = false
  depends_on                 = [google_project_service.apis]
}

resource "google_bigquery_table" "topic_log" {
  dataset_id          = google_bigquery_dataset.topic_log.dataset_id
  table_id            = var.bigquery_table_id
  description         = "Every MQTT message published to the mcloudtt cluster"
  deletion_protection = var.deletion_protection

  # Must equal the schema the BigQuery sink writes (it checks the table at start).
  schema = file("${path.module}/topic_log_schema.json")

  time_partitioning {
    type          = "DAY"
    field         = "publish_time"
    expiration_ms = var.bigquery_partition_expiration_days > 0 ? var.bigquery_partition_expiration_days * 86400000 : null
  }
  clustering = ["topic"]
}
