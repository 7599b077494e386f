#!/bin/sh
# First start of InfluxDB 2.x: map the v1 database "energyhub" (what ingest, control and the dashboards use) to the
# bucket the image created, so the v1 /write and /query (InfluxQL) work unchanged; and the aggregates' two
# policies (docs/data.md) to buckets of their own: one-minute data a year, quarter hours forever.
set -eu
bucket_id=$(influx bucket list --name "${DOCKER_INFLUXDB_INIT_BUCKET}" --hide-headers | cut -f1)
influx v1 dbrp create --db energyhub --rp raw --bucket-id "${bucket_id}" --default
year_id=$(influx bucket create --name energyhub_year --retention 8784h --hide-headers | cut -f1)
influx v1 dbrp create --db energyhub --rp year --bucket-id "${year_id}"
forever_id=$(influx bucket create --name energyhub_forever --retention 0 --hide-headers | cut -f1)
influx v1 dbrp create --db energyhub --rp forever --bucket-id "${forever_id}"
