# Partly observed topic, for sensitivity analysis. X is the observed topic label; U is the unobserved rest of
# the topic (observed "no"), which also drives T, M and Y. The effects are NOT identified: estimators adjust
# for X, flag the result as unidentified, and the OVB bounds of deconfound.sensitivity say how far U could move it.
graph [
  directed 1
  node [ id 0 label "X" ]
  node [ id 4 label "U" observed "no" ]
  node [ id 1 label "T" ]
  node [ id 2 label "M" ]
  node [ id 3 label "Y" ]
  edge [ source 0 target 1 ]
  edge [ source 0 target 2 ]
  edge [ source 0 target 3 ]
  edge [ source 4 target 1 ]
  edge [ source 4 target 2 ]
  edge [ source 4 target 3 ]
  edge [ source 1 target 2 ]
  edge [ source 1 target 3 ]
  edge [ source 2 target 3 ]
]
