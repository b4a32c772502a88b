"""The K studies: which credit horizon wins, on the simulator and on real logged data."""
