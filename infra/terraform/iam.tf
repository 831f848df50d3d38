# Who may write the topic log: a Google service account with write access to the dataset only,
# used by the BigQuery adapter's pods through Workload Identity (no key file). The brokers' own
# Kubernetes service account is bound too, for the in-broker sink ([bigquery] enabled = true).
resource "google_service_account" "topic_log" {
  account_id   = "${var.name}-topic-log"
  display_name = "mcloudtt topic log writer"
  depends_on   = [google_project_service.apis]
}

# dataEditor on the dataset: insert rows (tabledata.insertAll), read the table's schema, and
# create the table if it was deleted. Nothing outside this dataset.
resource "google_bigquery_dataset_iam_member" "topic_log_writer" {
  dataset_id = google_bigquery_dataset.topic_log.dataset_id
  role       = "roles/bigquery.dataEditor"
  member     = "serviceAccount:${google_service_account.topic_log.email}"
}

# Kubernetes service accounts in the namespace that may act as the Google service account. The
# identity pool PROJECT.svc.id.goog exists once the Autopilot cluster does.
resource "google_service_account_iam_member" "workload_identity" {
  for_each           = toset(["mcloudtt-bq-adapter", "mcloudtt"])
  service_account_id = google_service_account.topic_log.name
  role               = "roles/iam.workloadIdentityUser"
  member             = "serviceAccount:${var.project_id}.svc.id.goog[${var.namespace}/${each.value}]"
  depends_on         = [google_container_cluster.mcloudtt]
}
