variable "project_id" {
  description = "Google Cloud project that holds the cluster, Memorystore and the BigQuery dataset."
  type        = string
}

variable "region" {
  description = "Region of the cluster (regional Autopilot: nodes in several zones) and of Memorystore."
  type        = string
  default     = "europe-west3"
}

variable "name" {
  description = "Prefix of every resource's name."
  type        = string
  default     = "mcloudtt"
}

variable "subnet_cidr" {
  description = "Primary range of the cluster's subnet (nodes)."
  type        = string
  default     = "10.10.0.0/20"
}

variable "pods_cidr" {
  description = "Secondary range for pods."
  type        = string
  default     = "10.20.0.0/16"
}

variable "services_cidr" {
  description = "Secondary range for services."
  type        = string
  default     = "10.30.0.0/20"
}

variable "deletion_protection" {
  description = "Refuse `terraform destroy` of the cluster and the topic-log table while true."
  type        = bool
  default     = true
}

variable "redis_tier" {
  description = "Memorystore tier: STANDARD_HA (a replica in another zone, automatic failover) or BASIC."
  type        = string
  default     = "STANDARD_HA"

  validation {
    condition     = contains(["STANDARD_HA", "BASIC"], var.redis_tier)
    error_message = "redis_tier must be STANDARD_HA or BASIC."
  }
}

variable "redis_memory_size_gb" {
  description = "Memorystore capacity in GiB: sessions, queued messages, retained messages, routes."
  type        = number
  default     = 1
}

variable "redis_version" {
  description = "Memorystore for Redis version."
  type        = string
  default     = "REDIS_7_2"
}

variable "bigquery_location" {
  description = "Location of the BigQuery dataset (a region or a multi-region such as EU or US)."
  type        = string
  default     = "EU"
}

variable "bigquery_dataset_id" {
  description = "BigQuery dataset of the topic log."
  type        = string
  default     = "mcloudtt"
}

variable "bigquery_table_id" {
  description = "BigQuery table of the topic log: one row per published message."
  type        = string
  default     = "topic_log"
}

variable "bigquery_partition_expiration_days" {
  description = "Days a day-partition of the topic log is kept; 0 keeps them forever."
  type        = number
  default     = 0
}

variable "namespace" {
  description = "Kubernetes namespace of infra/k8s (Workload Identity binds service accounts in it)."
  type        = string
  default     = "mcloudtt"
}

variable "image_tag" {
  description = "Tag of the mcloudtt image pushed to the Artifact Registry repository."
  type        = string
  default     = "0.1.0"
}
