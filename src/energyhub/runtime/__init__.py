"""What every service needs to run: settings, connection settings, port checks, process supervision."""
