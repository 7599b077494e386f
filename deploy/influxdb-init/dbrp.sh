#!/bin/sh
# First start of InfluxDB 2.x: map the v1 database "energyhub" (what ingest, control and the dashboards use) to the
# bucket the image created, so the v1 /write and /query (InfluxQL) work unchanged.
set -eu
bucket_id=$(influx bucket list --name "${DOCKER_INFLUXDB_INIT_BUCKET}" --hide-headers | cut -f1)
influx v1 dbrp create --db energyhub --rp autogen --bucket-id "${bucket_id}" --default
