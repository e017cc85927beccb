#!/bin/sh
echo "user-data script ran" > /var/tmp/script-ran
