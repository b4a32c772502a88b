"""Prefect flows over the `ppg` stages. Only the `ppg` commands that start flows import this
package, lazily: the library never imports Prefect at module level."""
