from tap_marketo_activities.tap import main

main()
