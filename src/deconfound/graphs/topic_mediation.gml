# Topic-confounded mediation (the default). X is the whole confounder set (the topic) and confounds
# every stage: X -> T, X -> M, X -> Y; T -> M -> Y is the indirect path, T -> Y the direct one.
# Estimators adjust for X in both stages.
graph [
  directed 1
  node [ id 0 label "X" ]
  node [ id 1 label "T" ]
  node [ id 2 label "M" ]
  node [ id 3 label "Y" ]
  edge [ source 0 target 1 ]
  edge [ source 0 target 2 ]
  edge [ source 0 target 3 ]
  edge [ source 1 target 2 ]
  edge [ source 1 target 3 ]
  edge [ source 2 target 3 ]
]
